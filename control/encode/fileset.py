"""The file set: every file of a title with size and sha256, and atomic publication.

Appliances fill titles file by file and verify each against this manifest; operators read the
ladder and its measured points from it.  The manifest is plain JSON (the control plane signs it
afterwards), parsed strictly: unknown or missing keys are errors, not silently ignored.

A title is staged in ``origin_root/.staging-*`` and renamed into ``origin_root/<title_id>`` in one
``rename``: readers see either nothing or the whole title.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import BadManifest, TitleExists

SCHEMA = "nearcast.fileset/1"
MANIFEST_NAME = "fileset.json"
STAGING_PREFIX = ".staging-"
KINDS = ("manifest", "init", "segment", "audio", "artwork", "thumbs")


@dataclass(frozen=True)
class FileEntry:
    path: str
    size: int
    sha256: str
    rendition: str | None
    kind: str

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "size": self.size, "sha256": self.sha256, "rendition": self.rendition,
                "kind": self.kind}

    @classmethod
    def from_dict(cls, raw: object) -> FileEntry:
        d = _exact(raw, {"path", "size", "sha256", "rendition", "kind"}, "file")
        path = _typed(d, "path", str)
        if path.startswith("/") or ".." in path.split("/") or "\\" in path or not path:
            raise BadManifest(f"file path {path[:80]!r} escapes the title")
        sha = _typed(d, "sha256", str)
        if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
            raise BadManifest(f"file {path!r}: sha256 must be 64 lowercase hex digits")
        kind = _typed(d, "kind", str)
        if kind not in KINDS:
            raise BadManifest(f"file {path!r}: unknown kind {kind!r}")
        size = _typed(d, "size", int)
        if size < 0:
            raise BadManifest(f"file {path!r}: negative size")
        rendition = d["rendition"]
        if rendition is not None and not isinstance(rendition, str):
            raise BadManifest(f"file {path!r}: rendition must be a string or null")
        return cls(path, size, sha, rendition, kind)


@dataclass(frozen=True)
class FileSetManifest:
    title_id: str
    name: str
    version: int
    created: str
    duration: float
    genres: tuple[str, ...]
    hls: str
    dash: str | None
    #: ``{"scheme": "cenc"|"aes128", "kid": hex}`` or None.  Never the key.
    encryption: dict[str, str] | None
    #: Per rendition: id, kind, codec, codec_family, width, height, target/average/peak bitrate.
    renditions: tuple[dict[str, Any], ...]
    #: ``{"mode": "auto"|"fixed", "points": [RDPoint dicts], ...}``: why the ladder is what it is.
    ladder: dict[str, Any]
    source: dict[str, Any]
    files: tuple[FileEntry, ...] = field(default=())

    _KEYS = frozenset({"schema", "title_id", "name", "version", "created", "duration", "genres", "hls", "dash",
                       "encryption", "renditions", "ladder", "source", "files"})

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "title_id": self.title_id,
            "name": self.name,
            "version": self.version,
            "created": self.created,
            "duration": self.duration,
            "genres": list(self.genres),
            "hls": self.hls,
            "dash": self.dash,
            "encryption": self.encryption,
            "renditions": [dict(r) for r in self.renditions],
            "ladder": self.ladder,
            "source": self.source,
            "files": [f.to_dict() for f in self.files],
        }

    @classmethod
    def from_dict(cls, raw: object) -> FileSetManifest:
        d = _exact(raw, set(cls._KEYS), "manifest")
        if d["schema"] != SCHEMA:
            raise BadManifest(f"unknown manifest schema {str(d['schema'])[:40]!r}")
        genres = _typed(d, "genres", list)
        if not all(isinstance(g, str) for g in genres):
            raise BadManifest("genres must be strings")
        dash = d["dash"]
        if dash is not None and not isinstance(dash, str):
            raise BadManifest("dash must be a path or null")
        enc = d["encryption"]
        if enc is not None and not (isinstance(enc, dict) and set(enc) == {"scheme", "kid"}
                                    and all(isinstance(v, str) for v in enc.values())):
            raise BadManifest("encryption must be null or {scheme, kid}")
        renditions = _typed(d, "renditions", list)
        if not all(isinstance(r, dict) for r in renditions):
            raise BadManifest("renditions must be objects")
        duration = d["duration"]
        if not isinstance(duration, int | float) or isinstance(duration, bool) or duration <= 0:
            raise BadManifest("duration must be a positive number")
        files = tuple(FileEntry.from_dict(f) for f in _typed(d, "files", list))
        if len({f.path for f in files}) != len(files):
            raise BadManifest("duplicate file paths")
        return cls(
            title_id=_typed(d, "title_id", str),
            name=_typed(d, "name", str),
            version=_typed(d, "version", int),
            created=_typed(d, "created", str),
            duration=float(duration),
            genres=tuple(genres),
            hls=_typed(d, "hls", str),
            dash=dash,
            encryption=enc,
            renditions=tuple(renditions),
            ladder=_typed(d, "ladder", dict),
            source=_typed(d, "source", dict),
            files=files,
        )

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)


def _exact(raw: object, keys: set[str], what: str) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise BadManifest(f"{what} must be a JSON object")
    missing, extra = keys - set(raw), set(raw) - keys
    if missing or extra:
        raise BadManifest(f"{what}: missing {sorted(missing)} unknown {sorted(str(k) for k in extra)[:5]}")
    return raw


def _typed(d: dict[str, Any], key: str, typ: type) -> Any:
    value = d[key]
    if not isinstance(value, typ) or (typ is int and isinstance(value, bool)):
        raise BadManifest(f"{key} must be {typ.__name__}")
    return value


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def classify(rel: str, audio_ids: set[str]) -> tuple[str | None, str]:
    """``(rendition, kind)`` for a path in the title tree."""
    parts = rel.split("/")
    if len(parts) == 1:
        return None, "manifest"
    top, name = parts[0], parts[-1]
    if top == "artwork":
        return None, "artwork"
    if top == "thumbs":
        return None, "thumbs"
    if name.endswith(".m3u8"):
        return top, "manifest"
    if top in audio_ids:
        return top, "audio"
    return top, "init" if name == "init.mp4" else "segment"


def entries(root: Path, audio_ids: set[str]) -> tuple[FileEntry, ...]:
    out: list[FileEntry] = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix()
        if rel == MANIFEST_NAME:
            continue
        rendition, kind = classify(rel, audio_ids)
        out.append(FileEntry(rel, path.stat().st_size, sha256_file(path), rendition, kind))
    return tuple(out)


def new_staging(origin_root: Path, title_id: str) -> Path:
    origin_root.mkdir(parents=True, exist_ok=True)
    path = origin_root / f"{STAGING_PREFIX}{title_id}-{secrets.token_hex(4)}"
    path.mkdir()
    return path


def publish(staging: Path, origin_root: Path, title_id: str) -> Path:
    """Rename the staged title into place; refuses to replace an existing title."""
    final = origin_root / title_id
    if final.exists():
        raise TitleExists(f"title {title_id!r} already exists in the origin store")
    _fsync_dir(staging)
    try:
        os.rename(staging, final)
    except OSError as exc:
        raise TitleExists(f"title {title_id!r} appeared while publishing ({exc.strerror})") from None
    _fsync_dir(origin_root)
    return final


def discard(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def sweep_staging(origin_root: Path, older_than: float = 3600.0) -> list[Path]:
    """Remove staging trees a killed job left behind (they are never visible as titles)."""
    removed: list[Path] = []
    if not origin_root.is_dir():
        return removed
    now = time.time()
    for p in origin_root.iterdir():
        if p.name.startswith(STAGING_PREFIX) and p.is_dir() and now - p.stat().st_mtime >= older_than:
            discard(p)
            removed.append(p)
    return removed


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
