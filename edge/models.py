"""The appliance's model manager: desired model → download → verify → load → warm up → swap.

The invariant is that a request always finds a working model (or none, before the first one): every
step of a new version runs beside the current one — the bundle is verified and unpacked by
:func:`shared.bundle.open_bundle` into its own directory, the booster is loaded and warmed on a worker
thread — and only a model that scored a synthetic page with finite numbers replaces the reference the
handlers read.  That single attribute assignment is the swap; there is nothing to lock.

On disk (``rerank.models_dir``)::

    downloads/V.ncb[.part]   a bundle being fetched (``.part`` is resumed with a Range request)
    versions/V/              verified, unpacked bundles: the active one and the previous one
    versions/.V.*.removing   a version being deleted: renamed out of the way first, so a crash (even
                             SIGKILL) mid-delete never leaves a half-deleted ``versions/V`` to be
                             taken for a whole one; removed at start-up
    state.json               {"active": V, "previous": U}, written atomically, read at start-up

A rollback is an ordinary desired state naming the previous version: its directory is still there (it
was verified when first opened), so it loads without a download.  Any failure is acked ``failed`` with
the reason, counted, and leaves the current model serving.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import shutil
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import xgboost as xgb

from shared.bandits import LinearBandit
from shared.bundle import METADATA_NAME, BundleError, clean_staging, open_bundle, parse_metadata
from shared.envelope import Envelope
from shared.errors import InvalidInput
from shared.files import write_atomic
from shared.ids import check_id
from shared.messages import Ack, DesiredModel, ModelDescriptor

from .metrics import EdgeMetrics
from .rerank import F32, CandidateError, check_spec

log = logging.getLogger(__name__)

STATE_NAME = "state.json"
WARMUP_ROWS = 400  # one 10 x 40 page
_CHUNK = 1 << 16

SendAck = Callable[[Ack], Awaitable[None]]


class ModelError(InvalidInput):
    """A model bundle unpacked fine but cannot serve: unknown features, unloadable, or bad scores."""


BANDIT_NAME = "bandit.npz"


@dataclass(frozen=True)
class LoadedModel:
    version: str
    features: tuple[str, ...]
    booster: xgb.Booster
    iteration_range: tuple[int, int]
    #: The artwork bandit fitted on every edge's logged choices, when the bundle ships one.
    bandit: LinearBandit | None = None

    def score(self, x: F32) -> F32:
        """``inplace_predict`` skips the DMatrix copy: a whole page costs about a millisecond."""
        out = self.booster.inplace_predict(x, iteration_range=self.iteration_range, validate_features=False)
        return np.asarray(out, dtype=np.float32).reshape(-1)


def load_model(directory: Path, version: str) -> LoadedModel:
    """Load and warm up an unpacked bundle. Blocking: run it on a worker thread."""
    try:
        meta = parse_metadata((directory / METADATA_NAME).read_bytes())
        spec = json.loads((directory / meta.feature_spec).read_text())
        features = check_spec(spec)
        best = spec.get("best_iteration")
        if best is not None and not (isinstance(best, int) and best >= 0):
            raise ModelError("feature spec: best_iteration must be a non-negative integer")
        booster = xgb.Booster(params={"nthread": 1})
        booster.load_model(directory / meta.model)
    except (OSError, ValueError, RecursionError, BundleError, CandidateError, xgb.core.XGBoostError) as exc:
        raise ModelError(f"model {version}: cannot load ({str(exc)[:300]})") from None
    if meta.version != version:
        raise ModelError(f"{directory} holds {meta.version!r}, not {version!r}")
    if booster.num_features() != len(features):
        raise ModelError(f"model {version}: booster takes {booster.num_features()} features, "
                         f"spec names {len(features)}")
    bandit = None
    if (directory / BANDIT_NAME).is_file():
        try:
            bandit = LinearBandit.load(directory / BANDIT_NAME)
        except InvalidInput as exc:
            raise ModelError(f"model {version}: artwork bandit unusable ({str(exc)[:200]})") from None
    model = LoadedModel(version, features, booster, (0, best + 1) if best is not None else (0, 0), bandit)
    warm_up(model)
    return model


def warm_up(model: LoadedModel) -> None:
    """Score a synthetic page; an exception, a wrong shape or a non-finite score refuses the model."""
    rng = np.random.default_rng(0)
    x = rng.random((WARMUP_ROWS, len(model.features)), dtype=np.float32)
    try:
        scores = model.score(x)
    except Exception as exc:  # anything the model does wrong is a refusal, not a crash
        raise ModelError(f"model {model.version}: warm-up raised {type(exc).__name__}: {str(exc)[:200]}") from None
    if scores.shape != (WARMUP_ROWS,) or not np.all(np.isfinite(scores)):
        raise ModelError(f"model {model.version}: warm-up gave non-finite or misshapen scores")


REMOVING_SUFFIX = ".removing"


def discard_dir(path: Path) -> None:
    """Delete a version directory so that no crash leaves it half deleted under its own name.

    ``rmtree`` removes file by file: killed halfway, it would leave ``versions/V`` with some files
    gone, which a later rollback to V would load as if it were whole.  One rename takes the name away
    first (atomic); the files go after, and a crash leaves only a dot-named leftover that start-up
    removes.  Blocking: call from a worker thread.
    """
    doomed = path.with_name(f".{path.name}.{secrets.token_hex(6)}{REMOVING_SUFFIX}")
    try:
        os.rename(path, doomed)
    except FileNotFoundError:
        return
    shutil.rmtree(doomed, ignore_errors=True)


@dataclass
class _Want:
    env: Envelope[Any]
    desc: ModelDescriptor | None


class ModelManager:
    """Owns the active model; :meth:`apply` is the agent's ``desired/model`` handler."""

    def __init__(self, models_dir: Path, public_keys: Mapping[str, bytes], metrics: EdgeMetrics,
                 send_ack: SendAck, *, retry_s: float = 30.0, max_bytes: int = 512 << 20) -> None:
        self.dir = models_dir
        self.public_keys = public_keys
        self.metrics = metrics
        self.send_ack = send_ack
        self.retry_s = retry_s
        self.max_bytes = max_bytes
        self.current: LoadedModel | None = None
        self.previous: str | None = None
        self._want: _Want | None = None
        self._wake = asyncio.Event()
        self._http: aiohttp.ClientSession | None = None

    @property
    def version(self) -> str | None:
        return self.current.version if self.current else None

    def _version_dir(self, version: str) -> Path:
        return self.dir / "versions" / check_id(version, "model version")

    # -- lifecycle ---------------------------------------------------------------------------------
    async def start(self) -> None:
        """Load the version that was active before a restart (or the previous one if it fails)."""
        await asyncio.to_thread(self._prepare_dirs)
        self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=30))
        state = await asyncio.to_thread(self._read_state)
        for version in (state.get("active"), state.get("previous")):
            if not isinstance(version, str) or not (self.dir / "versions" / version).is_dir():
                continue
            try:
                model = await asyncio.to_thread(load_model, self._version_dir(version), version)
            except InvalidInput as exc:
                log.error("model %s from the last run does not load: %s", version, exc)
                continue
            prev = state.get("previous")
            self._swap(model, prev if isinstance(prev, str) and prev != version else None)
            break

    async def stop(self) -> None:
        if self._http is not None:
            await self._http.close()

    def _prepare_dirs(self) -> None:
        for sub in ("downloads", "versions"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        clean_staging(self.dir / "versions")
        for path in (self.dir / "versions").glob(f".*{REMOVING_SUFFIX}"):
            shutil.rmtree(path, ignore_errors=True)

    def _read_state(self) -> dict[str, Any]:
        try:
            doc = json.loads((self.dir / STATE_NAME).read_text())
        except (OSError, ValueError):
            return {}
        return doc if isinstance(doc, dict) else {}

    # -- desired state -----------------------------------------------------------------------------
    async def apply(self, env: Envelope[Any]) -> None:
        body = env.body
        if not isinstance(body, DesiredModel):
            raise InvalidInput("not a desired model")
        if body.model is not None:
            check_id(body.model.version, "model version")
            if not body.model.url.startswith(("http://", "https://")):
                raise InvalidInput("model url must be http(s)")
            if not 0 < body.model.size <= self.max_bytes:
                raise InvalidInput(f"model size must be in (0, {self.max_bytes}]")
        self._want = _Want(env, body.model)
        self._wake.set()

    async def run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            want = self._want
            if want is None:
                continue
            retry = await self._execute(want)
            if retry and not self._wake.is_set():
                try:
                    await asyncio.wait_for(self._wake.wait(), self.retry_s)
                except TimeoutError:
                    self._wake.set()

    async def _ack(self, want: _Want, status: Any, reason: str = "", **detail: Any) -> None:
        try:
            await self.send_ack(Ack(want.env.id, want.env.type, status, reason[:500],
                                    detail={"model_version": self.version, **detail}))
        except Exception as exc:  # a lost connection must not stop the manager; desired state is retained
            log.warning("model ack not sent: %s", exc)

    async def _execute(self, want: _Want) -> bool:
        """Bring the wanted version in; True when a transient failure deserves a retry."""
        desc = want.desc
        if desc is None or desc.version == self.version:
            await self._ack(want, "done")
            return False
        try:
            target = self._version_dir(desc.version)
            model = None
            if target.is_dir():  # unpacked before (a rollback): verified then, reused without a download
                try:
                    model = await asyncio.to_thread(load_model, target, desc.version)
                except ModelError as exc:  # damaged on disk since: the bundle itself may well be fine
                    log.warning("model %s: the unpacked copy does not load (%s); fetching the bundle again",
                                desc.version, exc)
                    await asyncio.to_thread(discard_dir, target)
            if model is None:
                bundle = await self._download(desc)
                try:
                    await asyncio.to_thread(open_bundle, bundle, desc, self.public_keys, target)
                finally:
                    bundle.unlink(missing_ok=True)  # refused: the same bytes would be refused again
                try:
                    model = await asyncio.to_thread(load_model, target, desc.version)
                except ModelError:
                    await asyncio.to_thread(discard_dir, target)
                    raise
        except (aiohttp.ClientError, TimeoutError, ConnectionError) as exc:
            self.metrics.model_loads.labels("retry").inc()
            log.warning("model %s: download failed, will retry: %s", desc.version, exc)
            await self._ack(want, "progress", f"download failed: {exc}", refused=desc.version)
            return True
        except (InvalidInput, OSError) as exc:
            self.metrics.model_loads.labels("refused").inc()
            log.error("model %s refused: %s", desc.version, exc)
            await self._ack(want, "failed", str(exc), refused=desc.version)
            return False
        if self._want is not want:  # superseded while loading: the newer desire wins
            return False
        self._swap(model, self.version)
        await asyncio.to_thread(self._persist)
        self.metrics.model_loads.labels("loaded").inc()
        log.info("model %s active (previous %s)", model.version, self.previous)
        await self._ack(want, "done")
        return False

    def _swap(self, model: LoadedModel, previous: str | None) -> None:
        old = self.current
        self.current = model
        self.previous = previous
        if old is not None and old.version != model.version:
            self.metrics.model_info.remove(old.version)
        self.metrics.model_info.labels(model.version).set(1)

    def _persist(self) -> None:
        """Record the active version, then drop every unpacked version except it and the previous one."""
        state = {"active": self.version, "previous": self.previous}
        write_atomic(self.dir / STATE_NAME, json.dumps(state).encode())
        keep = {self.version, self.previous}
        for path in (self.dir / "versions").iterdir():
            if path.name not in keep and not path.name.startswith("."):
                discard_dir(path)

    async def _download(self, desc: ModelDescriptor) -> Path:
        """Fetch to ``downloads/V.ncb``, resuming a ``.part`` left by an interrupted attempt."""
        assert self._http is not None, "start() first"
        final = self.dir / "downloads" / f"{check_id(desc.version, 'model version')}.ncb"
        part = final.with_name(final.name + ".part")
        have = part.stat().st_size if part.exists() else 0
        if have > desc.size:
            part.unlink()
            have = 0
        headers = {"Range": f"bytes={have}-"} if 0 < have < desc.size else {}
        if have < desc.size:
            try:
                await self._fetch(desc, part, have, headers)
            except BundleError:
                part.unlink(missing_ok=True)
                raise
        os.replace(part, final)
        return final

    async def _fetch(self, desc: ModelDescriptor, part: Path, have: int, headers: dict[str, str]) -> None:
        assert self._http is not None, "start() first"
        async with self._http.get(desc.url, headers=headers) as resp:
            if resp.status >= 500:
                raise ConnectionError(f"bundle download: HTTP {resp.status}")
            if resp.status not in (200, 206):
                raise BundleError(f"bundle download: HTTP {resp.status}")
            resumed = resp.status == 206 and bool(headers)
            fh = await asyncio.to_thread(open, part, "ab" if resumed else "wb")
            try:
                written = have if resumed else 0
                async for chunk in resp.content.iter_chunked(_CHUNK):
                    written += len(chunk)
                    if written > desc.size:
                        raise BundleError(f"bundle is larger than the descriptor's {desc.size} bytes")
                    fh.write(chunk)
            finally:
                fh.close()
        if written < desc.size:
            raise ConnectionError(f"bundle download ended after {written} of {desc.size} bytes")
