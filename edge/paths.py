"""Content paths: the one place that decides which request paths and manifest paths are acceptable.

The request path is parsed from the *raw* request line, never from a decoded or normalised form, so
``%2e%2e``, ``%2f``, double encoding and backslashes cannot turn into traversal after a check passed.
Every segment is percent-decoded exactly once and must then match a small, boring alphabet; anything
else is refused before the filesystem is touched.  File-set manifests are held to the same rule, so a
path that can be filled is always a path that can be requested, and the reverse.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import unquote

from shared.errors import InvalidInput

CONTENT_PREFIX = "/v1/content/"
MAX_PATH_LEN = 1024
MAX_DEPTH = 8
# A path segment: no leading dot (no hidden files, no "." or ".."), no separators, no escapes.
_SEGMENT_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._~+=@,-]{0,127}")
_TITLE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_TOKEN_RE = re.compile(r"[A-Za-z0-9._-]{1,4096}")

CONTENT_TYPES: dict[str, str] = {
    ".m3u8": "application/vnd.apple.mpegurl",
    ".mpd": "application/dash+xml",
    ".mp4": "video/mp4",
    ".m4s": "video/iso.segment",
    ".m4a": "audio/mp4",
    ".m4v": "video/mp4",
    ".vtt": "text/vtt; charset=utf-8",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".png": "image/png",
    ".webp": "image/webp",
    ".json": "application/json",
    ".key": "application/octet-stream",
}
MANIFEST_SUFFIXES = frozenset({".m3u8", ".mpd"})
SMALL_CACHEABLE_BYTES = 1 << 20


class BadPath(InvalidInput):
    """A request or manifest path that could escape, alias or confuse the cache layout."""


@dataclass(frozen=True)
class ContentRequest:
    token: str
    title_id: str
    path: str  # canonical, relative to the title root, "/"-separated

    @property
    def token_path(self) -> str:
        """The path a URL token is checked against."""
        return f"{self.title_id}/{self.path}"


def check_relative_path(path: str) -> str:
    """Return ``path`` if it is canonical and relative with only safe segments; else raise :class:`BadPath`."""
    if not isinstance(path, str) or not path or len(path) > MAX_PATH_LEN:
        raise BadPath("path is empty or too long")
    segments = path.split("/")
    if len(segments) > MAX_DEPTH:
        raise BadPath("path is nested too deeply")
    for seg in segments:
        if not _SEGMENT_RE.fullmatch(seg):
            raise BadPath(f"path segment {seg[:40]!r} is not allowed")
    return path


def check_title_id(title_id: str) -> str:
    if not _TITLE_RE.fullmatch(title_id):
        raise BadPath("title id is not allowed")
    return title_id


def parse_content_path(raw_path: str) -> ContentRequest:
    """Split a raw ``/v1/content/{token}/{title}/{path}`` request path (query already removed)."""
    if not raw_path.startswith(CONTENT_PREFIX) or len(raw_path) > MAX_PATH_LEN + 4200:
        raise BadPath("not a content path")
    parts = raw_path[len(CONTENT_PREFIX):].split("/")
    if len(parts) < 3:
        raise BadPath("content path needs a token, a title and a file")
    decoded: list[str] = []
    for part in parts:
        # Decode once, strictly; a "%" that survives decoding is double encoding and is refused.
        try:
            seg = unquote(part, errors="strict")
        except UnicodeDecodeError:
            raise BadPath("path is not valid UTF-8") from None
        if "%" in seg:
            raise BadPath("path is encoded more than once")
        if "/" in seg:
            raise BadPath("an encoded slash is not a path separator here")
        decoded.append(seg)
    token, title_id, rest = decoded[0], decoded[1], decoded[2:]
    if not _TOKEN_RE.fullmatch(token):
        raise BadPath("token is malformed")
    check_title_id(title_id)
    return ContentRequest(token, title_id, check_relative_path("/".join(rest)))


def content_type(path: str) -> str:
    dot = path.rfind(".")
    return CONTENT_TYPES.get(path[dot:].lower() if dot >= 0 else "", "application/octet-stream")


def kind_of(path: str) -> str:
    """A coarse request kind for metrics: manifest, init, segment, subtitle, image or other."""
    name = path.rsplit("/", 1)[-1].lower()
    dot = name.rfind(".")
    ext = name[dot:] if dot >= 0 else ""
    if ext in MANIFEST_SUFFIXES:
        return "manifest"
    if ext in (".mp4", ".m4s", ".m4a", ".m4v"):
        return "init" if name.startswith("init") else "segment"
    if ext == ".vtt":
        return "subtitle"
    if ext in (".jpg", ".jpeg", ".png", ".webp"):
        return "image"
    return "other"


def memory_cacheable(path: str, size: int) -> bool:
    """Manifests and init segments are small and requested by every session: keep them in memory."""
    return kind_of(path) in ("manifest", "init") and size <= SMALL_CACHEABLE_BYTES
