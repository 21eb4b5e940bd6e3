"""The origin: titles published by the encoder under ``<state>/origin/<title_id>/``, their signed file sets.

Registering a title reads the encoder's ``fileset.json``, checks that every listed file is there with
its size, and writes the signed manifest appliances verify (Ed25519, :func:`shared.signing.sign_document`)
to ``<state>/filesets/<title_id>/<version>.json``: a stable URL per version, never rewritten in place.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from shared.errors import InvalidInput, NotFound
from shared.files import write_atomic
from shared.ids import check_id
from shared.signing import Signer, sign_document

from .store import TitleRecord

MAX_MANIFEST_BYTES = 64 << 20
MAX_FILES = 500_000


def _file_entry(raw: object, root: Path) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise InvalidInput("fileset.json: every file must be an object")
    path, size, sha = raw.get("path"), raw.get("size"), raw.get("sha256")
    if not isinstance(path, str) or not path or path.startswith("/") or "\\" in path \
            or any(seg in ("", ".", "..") for seg in path.split("/")):
        raise InvalidInput(f"fileset.json: file path {str(path)[:80]!r} is not a relative path inside the title")
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise InvalidInput(f"fileset.json: {path}: size must be an integer >= 0")
    if not isinstance(sha, str) or len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
        raise InvalidInput(f"fileset.json: {path}: sha256 must be 64 lowercase hex digits")
    try:
        actual = (root / path).stat().st_size
    except OSError:
        raise InvalidInput(f"origin is missing {path}") from None
    if actual != size:
        raise InvalidInput(f"origin file {path} is {actual} bytes, the manifest says {size}")
    return {"path": path, "size": size, "sha256": sha}


def register(origin_dir: Path, filesets_dir: Path, signer: Signer, title_id: str, *,
             released: float | None = None) -> TitleRecord:
    """Check the title on the origin, sign its file set, and describe it for the store."""
    check_id(title_id, "title id")
    root = origin_dir / title_id
    source = root / "fileset.json"
    try:
        if source.stat().st_size > MAX_MANIFEST_BYTES:
            raise InvalidInput(f"{source} is larger than {MAX_MANIFEST_BYTES} bytes")
        doc = json.loads(source.read_text())
    except FileNotFoundError:
        raise NotFound(f"no title {title_id!r} on the origin (expected {source})") from None
    except (OSError, ValueError) as exc:
        raise InvalidInput(f"{source}: not readable JSON ({exc.__class__.__name__})") from None
    if not isinstance(doc, dict) or doc.get("title_id") != title_id or not isinstance(doc.get("files"), list):
        raise InvalidInput(f"{source}: not a file set of {title_id}")
    if len(doc["files"]) > MAX_FILES:
        raise InvalidInput(f"{source}: more than {MAX_FILES} files")
    files = [_file_entry(f, root) for f in doc["files"]]
    raw_version = doc.get("version", 1)
    version = check_id(f"v{raw_version}" if isinstance(raw_version, int) else raw_version, "file set version")
    hls = doc.get("hls") or "master.m3u8"
    dash = doc.get("dash")
    paths = {f["path"] for f in files}
    if hls not in paths or (dash is not None and dash not in paths):
        raise InvalidInput(f"{source}: the HLS/DASH manifests it names are not among its files")
    encryption = doc.get("encryption")
    raw_name = doc.get("name")
    name = raw_name if isinstance(raw_name, str) else title_id
    genres = tuple(g for g in doc.get("genres", []) if isinstance(g, str))[:32]
    signed = sign_document(signer, {"title_id": title_id, "version": version, "files": files,
                                    "hls": hls, "dash": dash, "encryption": encryption})
    target = filesets_dir / title_id / f"{version}.json"
    write_atomic(target, json.dumps(signed, sort_keys=True))
    now = time.time()
    return TitleRecord(title_id, name[:200], genres, version, sum(f["size"] for f in files), str(target), now,
                       False, released if released is not None else now, hls, dash,
                       bool(encryption))


def content_path(origin_dir: Path, title_id: str, relative: str) -> Path:
    """The file for ``relative`` inside a title, refusing anything that could step outside it."""
    check_id(title_id, "title id")
    if not relative or relative.startswith("/") or "\\" in relative or "\x00" in relative \
            or any(seg in ("", ".", "..") for seg in relative.split("/")):
        raise NotFound("no such file")
    root = (origin_dir / title_id).resolve()
    path = (root / relative).resolve()
    # A symlink may not lead out of the title, nor the title's own directory out of the origin.
    if not root.is_relative_to(origin_dir.resolve()) or not path.is_relative_to(root) or not path.is_file():
        raise NotFound("no such file")
    return path
