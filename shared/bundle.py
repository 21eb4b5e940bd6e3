"""The model bundle: one signed, compressed file carrying everything an edge re-ranker needs.

Both daemons use this module: the control plane builds a bundle from a training output directory and
publishes only its :class:`~shared.messages.ModelDescriptor` over MQTT; an appliance downloads the
file over HTTP and opens it here.  The container is a deterministic POSIX tar (sorted names, zero
times and owners, fixed modes) compressed with zstd, so the same inputs always give the same bytes and
the same sha256: a rebuilt bundle is recognisably the same bundle.

The signature covers a short statement binding the version to the size and sha256 of the compressed
file, not only the bytes, so a genuine bundle cannot be replayed under another version's descriptor.

Opening is paranoid in a fixed order, and nothing is written outside a fresh staging directory until
every check has passed: size, then sha256, then signature (all before decompressing a single byte),
then bounded decompression (a zip bomb stops at the bound, not at the disk's end), then each tar member
(regular files only, plain relative names, bounded count and size, no duplicates), then the metadata.
Only then is the staging directory renamed into place.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import json
import math
import os
import re
import shutil
import tarfile
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np
import zstandard

from .errors import InvalidInput, SignatureError
from .ids import check_id
from .messages import ModelDescriptor
from .schema import SchemaError, decode
from .signing import Signer, verify

FORMAT = 1
METADATA_NAME = "metadata.json"
FEATURE_SPEC_NAME = "feature_spec.json"
MODEL_SUFFIXES = (".ubj", ".json")
SUFFIX = ".ncb"

_STATEMENT_PREFIX = b"nearcast-model-bundle/v1\n"
_ZSTD_LEVEL = 10
_CHUNK = 1 << 16
_NAME_PART = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


class BundleError(InvalidInput):
    """A bundle (or the directory it is built from) is malformed, forged, too large or hostile."""


@dataclass(frozen=True)
class Limits:
    """Bounds that make a hostile bundle cost at most this much disk, memory and time to refuse."""

    max_compressed: int = 512 << 20
    max_unpacked: int = 2 << 30
    max_members: int = 256
    max_member: int = 1 << 30
    max_metadata: int = 1 << 20
    max_window: int = 1 << 27  # zstd window: bounds the decompressor's memory whatever the frame says


@dataclass(frozen=True)
class TrainingWindow:
    start: str
    end: str


@dataclass(frozen=True)
class BundleMetadata:
    """``metadata.json``: what the bundle is, so operators and gates can compare versions."""

    format: int
    version: str
    model: str  # the XGBoost ranker in its own UBJSON or JSON format
    training_window: TrainingWindow
    offline_metrics: dict[str, float] = field(default_factory=dict)
    tables: list[str] = field(default_factory=list)
    feature_spec: str = FEATURE_SPEC_NAME
    notes: str = ""

    def to_json(self) -> bytes:
        doc = {"format": self.format, "version": self.version, "model": self.model, "feature_spec": self.feature_spec,
               "training_window": {"start": self.training_window.start, "end": self.training_window.end},
               "offline_metrics": dict(sorted(self.offline_metrics.items())), "tables": sorted(self.tables),
               "notes": self.notes}
        return json.dumps(doc, sort_keys=True, indent=1, allow_nan=False).encode()


@dataclass(frozen=True)
class OpenedBundle:
    """A verified bundle unpacked at ``path``; every file named in ``metadata`` exists there."""

    path: Path
    metadata: BundleMetadata
    descriptor: ModelDescriptor

    @property
    def model_path(self) -> Path:
        return self.path / self.metadata.model

    @property
    def feature_spec_path(self) -> Path:
        return self.path / self.metadata.feature_spec

    def feature_spec(self) -> Any:
        return json.loads(self.feature_spec_path.read_text())

    def table(self, name: str) -> dict[str, np.ndarray[Any, Any]]:
        """Load one ``.npz`` table without pickle (object arrays are refused)."""
        if name not in self.metadata.tables:
            raise BundleError(f"bundle {self.metadata.version} has no table {name!r}")
        try:
            with np.load(self.path / name, allow_pickle=False) as npz:
                return {key: npz[key] for key in npz.files}
        except (ValueError, OSError) as exc:
            raise BundleError(f"table {name!r}: {exc}") from None


def statement(version: str, size: int, sha256: str) -> bytes:
    """The bytes the Ed25519 signature covers."""
    return _STATEMENT_PREFIX + f"{version}\n{size}\n{sha256}\n".encode()


def _check_name(name: str) -> str:
    parts = name.split("/")
    if len(name) > 255 or not all(_NAME_PART.fullmatch(p) and ".." not in p for p in parts):
        raise BundleError(f"member name {name[:80]!r} is not a plain relative path")
    return name


def _finite_metrics(metrics: Mapping[str, float]) -> None:
    for key, value in metrics.items():
        if not math.isfinite(value):
            raise BundleError(f"offline metric {key!r} is {value}; metrics must be finite")


def parse_metadata(raw: bytes, limits: Limits = Limits()) -> BundleMetadata:
    if len(raw) > limits.max_metadata:
        raise BundleError(f"{METADATA_NAME} is {len(raw)} bytes; at most {limits.max_metadata} allowed")
    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise BundleError(f"{METADATA_NAME} is not JSON: {str(exc)[:200]}") from None
    try:
        meta = decode(BundleMetadata, doc, "metadata")
    except SchemaError as exc:
        raise BundleError(str(exc)) from None
    if meta.format != FORMAT:
        raise BundleError(f"bundle format {meta.format} is not supported (expected {FORMAT})")
    try:
        check_id(meta.version, "model version")
    except InvalidInput as exc:
        raise BundleError(str(exc)) from None
    _check_name(meta.model)
    if not meta.model.endswith(MODEL_SUFFIXES) or meta.model == METADATA_NAME:
        raise BundleError(f"model file must end in {' or '.join(MODEL_SUFFIXES)}, not {meta.model[:80]!r}")
    _check_name(meta.feature_spec)
    if not meta.feature_spec.endswith(".json") or meta.feature_spec == METADATA_NAME:
        raise BundleError(f"feature spec must be a .json file other than {METADATA_NAME}")
    for table in meta.tables:
        _check_name(table)
        if not table.endswith(".npz"):
            raise BundleError(f"table {table[:80]!r} must be an .npz file")
    _finite_metrics(meta.offline_metrics)
    return meta


def _required(meta: BundleMetadata) -> set[str]:
    return {METADATA_NAME, meta.feature_spec, meta.model, *meta.tables}


# --- building (control plane) -------------------------------------------------------------------


def pack(src: Path, limits: Limits = Limits()) -> tuple[BundleMetadata, bytes]:
    """The deterministic, uncompressed tar of ``src`` after checking it is a complete bundle."""
    if not src.is_dir():
        raise BundleError(f"{src}: not a directory")
    meta_path = src / METADATA_NAME
    if not meta_path.is_file():
        raise BundleError(f"{src}: no {METADATA_NAME}")
    meta = parse_metadata(meta_path.read_bytes(), limits)
    files: list[str] = []
    for path in sorted(src.rglob("*")):
        rel = path.relative_to(src).as_posix()
        if path.is_symlink() or not (path.is_file() or path.is_dir()):
            raise BundleError(f"{rel}: only regular files may go into a bundle")
        if path.is_file():
            files.append(_check_name(rel))
    missing = _required(meta) - set(files)
    if missing:
        raise BundleError(f"{src}: missing {', '.join(sorted(missing))}")
    if len(files) > limits.max_members:
        raise BundleError(f"{len(files)} files; at most {limits.max_members} allowed")
    try:
        json.loads((src / meta.feature_spec).read_bytes())
    except (ValueError, RecursionError):
        raise BundleError(f"{meta.feature_spec} is not JSON") from None
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for rel in sorted(files):
            info = tarfile.TarInfo(rel)
            info.size = (src / rel).stat().st_size
            info.mode, info.mtime, info.uid, info.gid, info.uname, info.gname = 0o644, 0, 0, 0, "", ""
            with open(src / rel, "rb") as fh:
                tar.addfile(info, fh)
    return meta, buf.getvalue()


def seal(tar_bytes: bytes, version: str, signer: Signer, url: str) -> tuple[bytes, ModelDescriptor]:
    """Compress and sign an archive; returns the file's bytes and the descriptor that travels."""
    check_id(version, "model version")
    blob = zstandard.ZstdCompressor(level=_ZSTD_LEVEL, write_checksum=True).compress(tar_bytes)
    digest = hashlib.sha256(blob).hexdigest()
    signature = signer.sign(statement(version, len(blob), digest))
    return blob, ModelDescriptor(version=version, url=url, size=len(blob), sha256=digest,
                                 signature=base64.b64encode(signature).decode(), key_id=signer.key_id)


def build(src: Path, out_dir: Path, signer: Signer, base_url: str, limits: Limits = Limits()) -> ModelDescriptor:
    """Bundle ``src`` into ``out_dir/<version>.ncb`` (written atomically) and describe it."""
    meta, tar_bytes = pack(src, limits)
    if len(tar_bytes) > limits.max_unpacked:
        raise BundleError(f"bundle unpacks to {len(tar_bytes)} bytes; at most {limits.max_unpacked} allowed")
    name = meta.version + SUFFIX
    blob, desc = seal(tar_bytes, meta.version, signer, base_url.rstrip("/") + "/" + name)
    if len(blob) > limits.max_compressed:
        raise BundleError(f"bundle is {len(blob)} bytes; at most {limits.max_compressed} allowed")
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / f".{name}.tmp"
    tmp.write_bytes(blob)
    os.replace(tmp, out_dir / name)
    return desc


# --- opening (appliance) --------------------------------------------------------------------------


def verify_file(path: Path, desc: ModelDescriptor, public_keys: Mapping[str, bytes],
                limits: Limits = Limits()) -> None:
    """Check size, sha256 and signature of a downloaded bundle without decompressing anything."""
    if not 0 < desc.size <= limits.max_compressed:
        raise BundleError(f"descriptor size {desc.size} is outside (0, {limits.max_compressed}]")
    try:
        check_id(desc.version, "model version")
    except InvalidInput as exc:
        raise BundleError(str(exc)) from None
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise BundleError(f"{path}: {exc.strerror}") from None
    if size != desc.size:
        raise BundleError(f"bundle is {size} bytes; the descriptor says {desc.size}")
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
    if h.hexdigest() != desc.sha256.lower():
        raise BundleError("bundle sha256 does not match its descriptor")
    try:
        sig = base64.b64decode(desc.signature, validate=True)
    except (binascii.Error, ValueError):
        raise BundleError("descriptor signature is not base64") from None
    try:
        verify(public_keys, desc.key_id, statement(desc.version, desc.size, desc.sha256.lower()), sig)
    except SignatureError as exc:
        raise BundleError(f"bundle signature: {exc}") from None


class _Bounded(io.RawIOBase):
    """A read-only stream that fails once more than ``limit`` bytes have come out of ``inner``."""

    def __init__(self, inner: IO[bytes], limit: int) -> None:
        self._inner, self._limit, self.total = inner, limit, 0

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        view = memoryview(b)
        data = self._inner.read(len(view))
        self.total += len(data)
        if self.total > self._limit:
            raise BundleError(f"bundle unpacks to more than {self._limit} bytes")
        view[: len(data)] = data
        return len(data)


_MAX_EXTENDED_HEADER = 64 << 10
_EXTENDED_TYPES = (tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK)


class _BoundedTarInfo(tarfile.TarInfo):
    """Refuses oversized pax / GNU long-name headers before tarfile reads them whole into memory.

    ``_proc_member`` is tarfile's documented hook for subclasses (see its source), absent from typeshed.
    """

    def _proc_member(self, tar: tarfile.TarFile) -> tarfile.TarInfo:
        if self.type in _EXTENDED_TYPES and self.size > _MAX_EXTENDED_HEADER:
            raise BundleError(f"extended tar header of {self.size} bytes; at most {_MAX_EXTENDED_HEADER}")
        member: tarfile.TarInfo = getattr(super(), "_proc_member")(tar)  # noqa: B009
        return member


def _unpack(path: Path, staging: Path, limits: Limits) -> set[str]:
    seen: set[str] = set()
    declared = 0
    dctx = zstandard.ZstdDecompressor(max_window_size=limits.max_window)
    with open(path, "rb") as raw, dctx.stream_reader(raw) as zin:
        stream = io.BufferedReader(_Bounded(zin, limits.max_unpacked), _CHUNK)
        with tarfile.open(fileobj=stream, mode="r|", tarinfo=_BoundedTarInfo) as tar:
            for member in tar:
                if len(seen) >= limits.max_members:
                    raise BundleError(f"more than {limits.max_members} members")
                name = _check_name(member.name)
                if not member.isreg():
                    raise BundleError(f"member {name!r} is not a regular file")
                if name in seen or any(name.startswith(s + "/") or s.startswith(name + "/") for s in seen):
                    raise BundleError(f"member {name!r} appears twice or clashes with another")
                if member.size > limits.max_member:
                    raise BundleError(f"member {name!r} is {member.size} bytes; at most {limits.max_member}")
                declared += member.size
                if declared > limits.max_unpacked:
                    raise BundleError(f"members add up to more than {limits.max_unpacked} bytes")
                seen.add(name)
                target = staging / name
                target.parent.mkdir(parents=True, exist_ok=True)
                src = tar.extractfile(member)
                if src is None:  # pragma: no cover - isreg() members always have data
                    raise BundleError(f"member {name!r} has no data")
                fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o644)
                with os.fdopen(fd, "wb") as out:
                    shutil.copyfileobj(src, out, _CHUNK)
    return seen


def clean_staging(models_dir: Path) -> list[Path]:
    """Remove staging directories a crash left behind (call once at start-up, before opening bundles)."""
    removed = []
    for path in models_dir.glob(".*.staging") if models_dir.is_dir() else ():
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def open_bundle(path: Path, desc: ModelDescriptor, public_keys: Mapping[str, bytes], dest: Path,
                limits: Limits = Limits()) -> OpenedBundle:
    """Verify ``path`` against ``desc`` and unpack it to ``dest`` (which must not exist yet).

    Blocking (hashing, decompression, disk): call it from a worker thread, never the event loop.
    On any failure nothing is left at ``dest`` and :class:`BundleError` names the reason.
    """
    verify_file(path, desc, public_keys, limits)
    if dest.exists():
        raise BundleError(f"{dest} already exists")
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{desc.version}.", suffix=".staging", dir=dest.parent))
    try:
        try:
            names = _unpack(path, staging, limits)
        except zstandard.ZstdError as exc:
            raise BundleError(f"bundle does not decompress: {exc}") from None
        except tarfile.TarError as exc:
            raise BundleError(f"bundle is not a valid archive: {exc}") from None
        except EOFError:
            raise BundleError("bundle archive is truncated") from None
        if METADATA_NAME not in names:
            raise BundleError(f"bundle has no {METADATA_NAME}")
        meta = parse_metadata((staging / METADATA_NAME).read_bytes(), limits)
        if meta.version != desc.version:
            raise BundleError(f"bundle holds version {meta.version!r}; the descriptor says {desc.version!r}")
        missing = _required(meta) - names
        if missing:
            raise BundleError(f"bundle is missing {', '.join(sorted(missing))}")
        os.replace(staging, dest)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return OpenedBundle(dest, meta, desc)
