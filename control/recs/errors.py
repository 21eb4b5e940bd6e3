"""Errors the recommender raises, all typed so the CLI and the API can translate them in one place."""

from __future__ import annotations

from shared.errors import InvalidInput, NearcastError


class DataError(InvalidInput):
    """A data file is malformed; the message names the file and the line so it can be fixed by hand."""


class ModelError(NearcastError):
    """A model was used out of order (score before fit) or a saved model does not match its loader."""
