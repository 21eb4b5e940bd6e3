"""The control plane's store of sealed edge model bundles: ``<state dir>/edge-models/``.

Each version is two files, written in this order so a listed version always has its bundle::

    V.ncb    the signed, compressed bundle (:mod:`shared.bundle`), served at /v1/bundles/V.ncb
    V.json   the index entry: descriptor (without its URL) and the bundle's metadata

Versions are immutable: building or publishing an existing version is a conflict, never an overwrite,
so a descriptor handed to an appliance always names the same bytes.  The download URL is not stored but
derived from the current API URL when a descriptor is handed out (the signature covers version, size
and sha256, not the URL), so a control plane that moved keeps serving its old versions.
"""

from __future__ import annotations

import json
import logging
import shutil
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from shared import bundle
from shared.errors import Conflict, InvalidInput, NotFound
from shared.files import write_atomic
from shared.ids import check_id
from shared.messages import ModelDescriptor
from shared.schema import SchemaError, decode, encode
from shared.signing import Signer

from . import edge_model
from .store import TitleRecord

log = logging.getLogger(__name__)

INDEX_FORMAT = 1


@dataclass(frozen=True)
class BundleInfo:
    version: str
    created: float
    descriptor: ModelDescriptor
    metadata: dict[str, Any]

    def as_json(self) -> dict[str, Any]:
        d = self.descriptor
        return {"version": self.version, "created": self.created, "size": d.size, "sha256": d.sha256,
                "key_id": d.key_id, "url": d.url, "metadata": self.metadata}


@dataclass(frozen=True)
class _Index:
    format: int
    created: float
    descriptor: ModelDescriptor
    metadata: dict[str, Any]


class BundleRepo:
    """Versions on disk plus an in-memory index; blocking methods are meant for a worker thread."""

    def __init__(self, directory: Path, signer: Signer, base_url: str) -> None:
        self.dir = directory
        self.signer = signer
        self.base_url = base_url.rstrip("/")
        self._index: dict[str, BundleInfo] = {}
        self._lock = threading.RLock()  # one build or publish at a time (they run on worker threads)

    def load(self) -> None:
        """Read the index entries (blocking); entries without their bundle are skipped and logged."""
        self.dir.mkdir(parents=True, exist_ok=True)
        for stale in self.dir.glob(".build-*"):
            shutil.rmtree(stale, ignore_errors=True)
        for path in sorted(self.dir.glob("*.json")):
            try:
                entry = decode(_Index, json.loads(path.read_bytes()), path.name)
                version = check_id(entry.descriptor.version, "model version")
                if (self.dir / f"{version}{bundle.SUFFIX}").stat().st_size != entry.descriptor.size:
                    raise InvalidInput("bundle size differs from its index entry")
            except (OSError, ValueError, SchemaError, InvalidInput) as exc:
                log.error("model index %s ignored: %s", path.name, exc)
                continue
            self._index[version] = BundleInfo(version, entry.created, entry.descriptor, entry.metadata)

    # -- reading -----------------------------------------------------------------------------------
    def versions(self) -> list[BundleInfo]:
        return sorted((self._with_url(i) for i in self._index.values()), key=lambda i: (i.created, i.version))

    def get(self, version: str) -> BundleInfo:
        info = self._index.get(check_id(version, "model version"))
        if info is None:
            raise NotFound(f"no model version {version!r} (build it with `nearcast model build`)")
        return self._with_url(info)

    def descriptor(self, version: str) -> ModelDescriptor:
        return self.get(version).descriptor

    def path(self, version: str) -> Path:
        self.get(version)
        return self.dir / f"{version}{bundle.SUFFIX}"

    def _with_url(self, info: BundleInfo) -> BundleInfo:
        url = f"{self.base_url}/{info.version}{bundle.SUFFIX}"
        return replace(info, descriptor=replace(info.descriptor, url=url))

    # -- writing (blocking) --------------------------------------------------------------------------
    def publish(self, src: Path) -> BundleInfo:
        """Seal a complete bundle directory as a new version (its metadata names the version)."""
        with self._lock:
            meta = bundle.parse_metadata((src / bundle.METADATA_NAME).read_bytes())
            version = meta.version
            if version in self._index or (self.dir / f"{version}{bundle.SUFFIX}").exists():
                raise Conflict(f"model version {version!r} already exists; versions are immutable")
            desc = bundle.build(src, self.dir, self.signer, self.base_url)
            info = BundleInfo(version, time.time(), replace(desc, url=""), json.loads(meta.to_json()))
            write_atomic(self.dir / f"{version}.json",
                         json.dumps(encode(_Index(INDEX_FORMAT, info.created, info.descriptor, info.metadata)),
                                    indent=1, allow_nan=False))
            self._index[version] = info
        return self._with_url(info)

    def build(self, version: str, titles: list[TitleRecord], origin_dir: Path, *, seed: int = 0,
              source: str = "auto", synthetic_pages: int = 600, artwork_logs: Path | None = None) -> BundleInfo:
        """Train the edge ranker, lay out its bundle directory and publish it as ``version``."""
        check_id(version, "model version")
        with self._lock:
            if version in self._index:
                raise Conflict(f"model version {version!r} already exists; versions are immutable")
            log_dir = self.dir.parent / "edge-impressions"
            data = edge_model.training_log(log_dir, seed, [t.title_id for t in titles], source=source,
                                           synthetic_pages=synthetic_pages)
            trained = edge_model.train(data.pages, seed=seed)
            work = self.dir / f".build-{version}"
            shutil.rmtree(work, ignore_errors=True)
            try:
                edge_model.write_bundle_dir(work, version, trained, data, titles, origin_dir, artwork_logs)
                return self.publish(work)
            finally:
                shutil.rmtree(work, ignore_errors=True)
