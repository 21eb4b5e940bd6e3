"""File-set manifests from the control plane: verified, then held to strict rules.

The manifest is the only thing that tells the fill agent what to write where, so a path in it gets
the same check as a request path (canonical, relative, safe segments), sizes and digests are typed,
duplicates are refused, and unknown fields (rendition info, ladders, whatever the encoder adds) are
ignored rather than rejected, so the two sides can evolve separately.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from shared.errors import InvalidInput
from shared.signing import verify_document

from .paths import BadPath, check_relative_path, check_title_id

MAX_FILES = 200_000
MAX_FILE_BYTES = 1 << 40
_SHA_RE = re.compile(r"[0-9a-f]{64}")


class BadManifest(InvalidInput):
    """The file-set manifest does not verify or does not follow the rules."""


@dataclass(frozen=True)
class FileEntry:
    path: str
    size: int
    sha256: str


@dataclass(frozen=True)
class FileSetManifest:
    title_id: str
    version: str
    files: tuple[FileEntry, ...]

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)


def parse_manifest(data: bytes, public_keys: Mapping[str, bytes], *, title_id: str, version: str) -> FileSetManifest:
    """Verify the signature, then the content; raise :class:`BadManifest` (or SignatureError) on anything off."""
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise BadManifest("file-set manifest is not JSON") from None
    if not isinstance(doc, dict):
        raise BadManifest("file-set manifest is not a JSON object")
    body = verify_document(public_keys, doc)
    return manifest_from_doc(body, title_id=title_id, version=version)


def manifest_from_doc(body: Mapping[str, Any], *, title_id: str, version: str) -> FileSetManifest:
    if body.get("title_id") != title_id or body.get("version") != version:
        raise BadManifest(f"manifest is for {str(body.get('title_id'))[:64]}/{str(body.get('version'))[:64]}, "
                          f"not {title_id}/{version}")
    try:
        check_title_id(title_id)
        check_title_id(version)
    except BadPath as exc:
        raise BadManifest(f"title or version id: {exc}") from None
    files = body.get("files")
    if not isinstance(files, list) or not files:
        raise BadManifest("manifest lists no files")
    if len(files) > MAX_FILES:
        raise BadManifest(f"manifest lists more than {MAX_FILES} files")
    out: list[FileEntry] = []
    seen: set[str] = set()
    dirs: set[str] = set()
    for i, entry in enumerate(files):
        if not isinstance(entry, dict):
            raise BadManifest(f"files[{i}] is not an object")
        path, size, sha = entry.get("path"), entry.get("size"), entry.get("sha256")
        if not isinstance(path, str):
            raise BadManifest(f"files[{i}].path is not a string")
        try:
            check_relative_path(path)
        except BadPath as exc:
            raise BadManifest(f"files[{i}].path: {exc}") from None
        if isinstance(size, bool) or not isinstance(size, int) or not 0 <= size <= MAX_FILE_BYTES:
            raise BadManifest(f"files[{i}].size is not a valid size")
        if not isinstance(sha, str) or not _SHA_RE.fullmatch(sha):
            raise BadManifest(f"files[{i}].sha256 is not a lowercase hex SHA-256")
        parents = {path.rsplit("/", k)[0] for k in range(1, path.count("/") + 1)}
        if path in seen or path in dirs or parents & seen:
            raise BadManifest(f"files[{i}].path {path!r} is listed twice or is both a file and a folder")
        seen.add(path)
        dirs |= parents
        out.append(FileEntry(path, size, sha))
    return FileSetManifest(title_id, version, tuple(out))
