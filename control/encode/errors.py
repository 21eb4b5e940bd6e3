"""Typed failures of an ingest, each with a one-line reason fit for an operator's terminal.

Bad masters are the operator's problem (``InvalidInput``, HTTP 400); encoder crashes are ours
(``EncodeFailed``, HTTP 500).  The CLI and the API translate these at their edges.
"""

from __future__ import annotations

from shared.errors import Conflict, InvalidInput, NearcastError


class IngestError(NearcastError):
    """Base of every error an ingest raises on purpose."""


class BadMaster(IngestError, InvalidInput):
    """The master cannot become a title; the message says why in one line."""

    http_status = 400


class EmptyMaster(BadMaster):
    pass


class NotAVideo(BadMaster):
    pass


class NoVideoStream(BadMaster):
    pass


class TruncatedMaster(BadMaster):
    pass


class AbsurdDimensions(BadMaster):
    pass


class BadSpec(IngestError, InvalidInput):
    """The ingest request itself is inconsistent (unknown codec, silly segment length, bad id)."""

    http_status = 400


class TitleExists(IngestError, Conflict):
    """Publishing would overwrite a title already in the origin store."""

    http_status = 409


class EncodeFailed(IngestError):
    """An encoder or muxer failed on input that probed fine: a bug or a resource problem."""


class IngestCancelled(IngestError):
    """The job was cancelled; nothing was published."""

    http_status = 499


class BadManifest(IngestError, InvalidInput):
    """A file-set manifest does not match the schema."""

    http_status = 400


def one_line(text: str, limit: int = 200) -> str:
    """Collapse an arbitrary library message into one bounded line."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"
