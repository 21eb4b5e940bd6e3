"""``ingest``: master file in, published file set out.

The orchestration shell around the pure planners: probe, choose the ladder, fan chunk encodes
out to worker processes, join, package, protect, list and publish.  Everything is written under a
staging directory inside the origin root and renamed into place at the very end, so an error,
a cancellation or a crash never leaves a half title visible (and never leaves a key file behind).
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import multiprocessing
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from fractions import Fraction
from pathlib import Path
from typing import Any, TypeVar

from . import artwork, dash, fileset, hls
from .chunks import frame_count, plan_chunks, segment_starts
from .crypto import TitleKey, aes128_encrypt, key_path, new_key, write_key
from .encoder import AUDIO_BITRATE, AudioJob, CencKey, ChunkJob, encode_audio, encode_chunk
from .errors import EncodeFailed, IngestCancelled, IngestError, TitleExists
from .fileset import FileSetManifest
from .ladder import RDPoint, fixed_ladder, per_title_ladder
from .package import Track, TrackJoiner, join_chunks
from .probe import ProbeResult, probe
from .quality import measure_points
from .spec import IngestSpec, VideoRung
from .stats import IngestStats, cpu_children, timed_call

Progress = Callable[[str, float], None]
AUDIO_ID = "audio_aac"
MAX_FPS = Fraction(60)
T = TypeVar("T")


@dataclass(frozen=True)
class Plan:
    """Everything decided before encoding starts; recorded in the manifest."""

    probe: ProbeResult
    fps: Fraction
    n_frames: int
    starts: tuple[int, ...]
    rungs: tuple[VideoRung, ...]
    points: tuple[RDPoint, ...]


def _cpus() -> int:
    """CPUs this process may run on (its affinity: a pinned or containerised job gets its share)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _workers(spec: IngestSpec) -> tuple[int, int]:
    cpus = _cpus()
    workers = spec.workers or cpus
    return workers, spec.encoder_threads or max(1, cpus // workers)


def ingest(
    master: Path,
    origin_root: Path,
    keys_dir: Path,
    spec: IngestSpec,
    progress: Progress | None = None,
    cancel: threading.Event | None = None,
    stats: IngestStats | None = None,
) -> FileSetManifest:
    """Encode ``master`` into ``origin_root/<title_id>/`` and return its manifest.

    Runs in the calling thread and fans out to ``spec.workers`` processes; call it from a thread
    (``asyncio.to_thread``) in the control plane.  Setting ``cancel`` stops the job: running worker
    processes are terminated and :class:`IngestCancelled` is raised.  Raises a :class:`BadMaster`
    subclass for garbage input, :class:`TitleExists` if the title is already published.  The
    caller serialises ingests per ``title_id`` (two concurrent ingests of one title would race
    for its key file).  ``stats``, if given, is filled with where the time went (phases, jobs).
    """
    report = progress or (lambda stage, fraction: None)
    clock = stats if stats is not None else IngestStats()
    if (origin_root / spec.title_id).exists():
        raise TitleExists(f"title {spec.title_id!r} already exists in the origin store")
    report("probe", 0.0)
    with clock.phase("probe"):
        info = probe(master)
    try:
        staging = fileset.new_staging(origin_root, spec.title_id)
    except OSError as exc:
        raise EncodeFailed(f"cannot create a staging directory in {origin_root}: {exc.strerror or exc}") from exc
    try:
        children0 = cpu_children()
        with worker_pool(spec) as pool:
            runner = Runner(pool, cancel, clock)
            with clock.phase("plan"):
                plan = make_plan(info, spec, runner, report)
            key = new_key(spec.title_id, spec.encrypt) if spec.encrypt != "none" else None
            videos, audio = encode_and_package(master, info, plan, spec, staging, runner, key, report)
            clock.workers = _workers(spec)[0]
        clock.workers_cpu += cpu_children() - children0
        if cancel is not None and cancel.is_set():
            raise IngestCancelled("ingest cancelled")
        report("package", 0.9)
        with clock.phase("manifests"):
            write_manifests(staging, spec, info, videos, audio, key)
            manifest = _manifest(staging, spec, info, plan, videos, audio, key)
            (staging / fileset.MANIFEST_NAME).write_text(json.dumps(manifest.to_dict(), indent=1))
        if key is not None:
            write_key(keys_dir, key)
        try:
            with clock.phase("publish"):
                fileset.publish(staging, origin_root, spec.title_id)
        except BaseException:
            if key is not None:
                key_path(keys_dir, spec.title_id).unlink(missing_ok=True)
            raise
    except OSError as exc:
        fileset.discard(staging)
        where = Path(exc.filename).name if exc.filename else "origin store"
        raise EncodeFailed(f"cannot write {where}: {exc.strerror or exc}") from exc
    except BaseException:
        fileset.discard(staging)
        raise
    report("done", 1.0)
    return manifest


def worker_pool(spec: IngestSpec) -> cf.ProcessPoolExecutor:
    workers, _ = _workers(spec)
    return cf.ProcessPoolExecutor(
        max_workers=workers, mp_context=multiprocessing.get_context("spawn"), initializer=_worker_init
    )


def _worker_init() -> None:
    # SVT-AV1 prints its whole configuration to stderr for every encoder it opens unless told
    # otherwise; these processes are ours, so their environment is ours to set.
    os.environ.setdefault("SVT_LOG", "1")


class Runner:
    """Runs batches of jobs on the pool, honouring cancellation between and during jobs."""

    def __init__(self, pool: cf.ProcessPoolExecutor, cancel: threading.Event | None,
                 stats: IngestStats | None = None) -> None:
        self.pool = pool
        self.cancel = cancel
        self.stats = stats

    def map(
        self,
        fn: Callable[[Any], T],
        jobs: Sequence[Any],
        on_done: Callable[[int], None],
        on_result: Callable[[int, T], None] | None = None,
    ) -> list[T]:
        """``[fn(job) for job in jobs]`` on the workers; ``on_result(i, result)`` as each job finishes."""
        futures = [self.pool.submit(timed_call, fn, job) for job in jobs]
        index = {f: i for i, f in enumerate(futures)}
        pending = set(futures)
        done_count = 0
        try:
            while pending:
                done, pending = cf.wait(pending, timeout=0.2, return_when=cf.FIRST_COMPLETED)
                for fut in sorted(done, key=index.__getitem__):
                    result, timing = fut.result()  # re-raise the first failure
                    if self.stats is not None:
                        self.stats.jobs.append(timing)
                    if on_result is not None:
                        on_result(index[fut], result)
                done_count += len(done)
                on_done(done_count)
                if self.cancel is not None and self.cancel.is_set():
                    raise IngestCancelled("ingest cancelled")
        except BaseException as exc:
            for fut in futures:
                fut.cancel()
            _terminate(self.pool)
            if isinstance(exc, cf.process.BrokenProcessPool):
                raise EncodeFailed("a worker process died mid-job (killed, or out of memory)") from None
            raise
        return [f.result()[0] for f in futures]


def _terminate(pool: cf.ProcessPoolExecutor) -> None:
    # The executor has no public way to stop running work; a cancelled ingest must not keep
    # both cores busy for minutes, so its processes are terminated (they write only to staging).
    for proc in list(getattr(pool, "_processes", {}).values()):
        proc.terminate()
    pool.shutdown(wait=True, cancel_futures=True)


def make_plan(info: ProbeResult, spec: IngestSpec, runner: Runner, report: Progress) -> Plan:
    fps = min(info.fps, MAX_FPS)
    n_frames = frame_count(info.duration, fps)
    starts = segment_starts(n_frames, fps, spec.segment_seconds)
    points: tuple[RDPoint, ...] = ()
    if spec.ladder == "fixed":
        rungs = fixed_ladder(info.display_width, info.height, spec.codecs, spec.max_rungs)
    else:
        report("ladder", 0.02)
        points = tuple(measure_points(info, fps, spec.codecs, spec.preset, runner.map,
                                      lambda frac: report("ladder", 0.02 + 0.18 * frac), spec.rate_control,
                                      n_frames / len(starts)))
        rungs = choose_rungs(points, spec)
    return Plan(info, fps, n_frames, starts, tuple(rungs), points)


def choose_rungs(points: Sequence[RDPoint], spec: IngestSpec) -> list[VideoRung]:
    """The per-title rungs of every codec from the trial points (``bench/ladder.py`` uses this too)."""
    rungs = [r for codec in spec.codecs
             for r in per_title_ladder(points, codec, max_rungs=spec.max_rungs, rate_control=spec.rate_control)]
    if not rungs:
        raise EncodeFailed("per-title search produced no rungs")
    return rungs


def encode_and_package(
    master: Path,
    info: ProbeResult,
    plan: Plan,
    spec: IngestSpec,
    staging: Path,
    runner: Runner,
    key: TitleKey | None,
    report: Progress,
) -> tuple[list[Track], Track | None]:
    workers, threads = _workers(spec)
    work = staging / ".work"
    work.mkdir()
    cenc = CencKey(key.kid, key.key) if key is not None and key.scheme == "cenc" else None
    chunks = plan_chunks(plan.starts, plan.n_frames, workers)
    gop = 2 * max(b - a for a, b in zip(plan.starts, (*plan.starts[1:], plan.n_frames), strict=True)) + 1
    # Whole-title jobs (artwork scan, audio) go first: queued last they would run alone at the
    # end while the other workers idle.  Chunks then fill in around them.
    jobs: list[Any] = []
    if spec.artwork_candidates:
        jobs.append(artwork.artwork_job(master, info, staging, spec.artwork_candidates))
    duration = float(plan.n_frames / plan.fps)
    if info.has_audio:
        jobs.append(AudioJob(os.fspath(master), info.start_time, duration, spec.segment_seconds,
                             os.fspath(work / "audio.mp4"), cenc))
    # Join as results come in: each rendition's chunks in title order, the audio when it is done,
    # so the packaging of early chunks overlaps the encoding of later ones (chunks are queued in
    # title order, and the big ones first, so they mostly finish in order too).
    joiners = {rung.id: TrackJoiner(staging, rung.id, kind="video", codec_family=rung.codec, fps=plan.fps,
                                    target_bitrate=rung.bitrate) for rung in plan.rungs}
    first_chunk = len(jobs)
    arrived: dict[int, dict[str, str]] = {}
    joined = 0
    audio: Track | None = None

    def on_result(i: int, result: object) -> None:
        nonlocal joined, audio
        if isinstance(jobs[i], AudioJob) and isinstance(result, str):
            audio = join_chunks([(0, result)], staging, AUDIO_ID, kind="audio", codec_family="aac", fps=None,
                                target_bitrate=AUDIO_BITRATE)
        elif isinstance(result, dict):
            arrived[i - first_chunk] = result
            while joined in arrived:
                paths = arrived.pop(joined)
                for rung in plan.rungs:
                    joiners[rung.id].add(chunks[joined].start_frame, paths[rung.id])
                    os.unlink(paths[rung.id])
                joined += 1

    # A decode-and-scale thread beside the encoders pays only with a CPU to spare: with a worker
    # per CPU it just takes turns with its own encoder (paired ingests on the shared 2-CPU box:
    # ~6 % more worker CPU with it, 5 runs of 6).
    spare = workers * threads < _cpus()
    jobs += [
        ChunkJob(os.fspath(master), info.start_time, plan.fps, c.start_frame, c.end_frame, c.keyframes, gop,
                 plan.rungs, os.fspath(work), c.index, spec.preset, threads, cenc, prefetch=spare)
        for c in chunks
    ]
    total = len(jobs)
    clock = runner.stats if runner.stats is not None else IngestStats()
    with clock.phase("encode+join"):
        runner.map(_run_job, jobs, lambda n: report("encode", 0.2 + 0.65 * n / total), on_result)
    with clock.phase("join"):
        if joined != len(chunks) or (info.has_audio and audio is None):
            raise EncodeFailed(f"joined {joined} of {len(chunks)} chunks")
        videos = [joiners[rung.id].finish() for rung in plan.rungs]
    fileset.discard(work)
    if key is not None and key.scheme == "aes128":
        for track in [*videos, *([audio] if audio else [])]:
            for seg in track.segments:
                path = staging / seg.path
                path.write_bytes(aes128_encrypt(path.read_bytes(), key, seg.number))
    return videos, audio


def _run_job(job: ChunkJob | AudioJob | artwork.ArtworkJob) -> dict[str, str] | str | list[str]:
    if isinstance(job, ChunkJob):
        return encode_chunk(job)
    if isinstance(job, AudioJob):
        return encode_audio(job)
    return artwork.run_artwork(job)


def write_manifests(
    staging: Path, spec: IngestSpec, info: ProbeResult, videos: list[Track], audio: Track | None, key: TitleKey | None
) -> None:
    hls_key = None
    if key is not None and key.scheme == "aes128":
        hls_key = hls.HlsKey("AES-128", spec.aes128_key_uri.format(title_id=spec.title_id))
    elif key is not None:
        hls_key = hls.HlsKey("SAMPLE-AES-CTR", spec.clearkey_license_url.format(title_id=spec.title_id),
                             keyformat="org.w3.clearkey")
    for track in [*videos, *([audio] if audio else [])]:
        (staging / hls.media_playlist_path(track)).write_text(hls.media_playlist(track, hls_key))
    # Byte ranges into AES-CBC segments are not independently decryptable: no I-frame lists then.
    iframes = key is None or key.scheme != "aes128"
    if iframes:
        for track in videos:
            (staging / hls.iframe_playlist_path(track)).write_text(hls.iframe_playlist(track, hls_key))
    (staging / "master.m3u8").write_text(hls.master_playlist(videos, audio, iframes=iframes))
    if key is None or key.scheme == "cenc":
        ck = dash.ClearKeyInfo(key, spec.clearkey_license_url.format(title_id=spec.title_id)) if key else None
        duration = max(t.duration_ticks / t.timescale for t in videos)
        (staging / "manifest.mpd").write_text(dash.mpd(videos, audio, duration, ck))


def _manifest(
    staging: Path,
    spec: IngestSpec,
    info: ProbeResult,
    plan: Plan,
    videos: list[Track],
    audio: Track | None,
    key: TitleKey | None,
) -> FileSetManifest:
    renditions = [
        {"id": t.id, "kind": t.kind, "codec": t.codec, "codec_family": t.codec_family, "width": t.width,
         "height": t.height, "target_bitrate": t.target_bitrate, "average_bitrate": t.average_bitrate,
         "peak_bitrate": t.peak_bitrate, "segments": len(t.segments)}
        for t in [*videos, *([audio] if audio else [])]
    ]
    return FileSetManifest(
        title_id=spec.title_id,
        name=spec.name,
        version=1,
        created=datetime.now(UTC).isoformat(timespec="seconds"),
        duration=round(float(plan.n_frames / plan.fps), 3),
        genres=spec.genres,
        hls="master.m3u8",
        dash="manifest.mpd" if (staging / "manifest.mpd").exists() else None,
        encryption={"scheme": key.scheme, "kid": key.kid} if key else None,
        renditions=tuple(renditions),
        ladder={"mode": spec.ladder, "metric": "psnr_y_db", "rungs": [r.to_dict() for r in plan.rungs],
                "points": [p.to_dict() for p in plan.points], "segment_seconds": spec.segment_seconds,
                "fps": str(plan.fps)},
        source=info.to_dict(),
        files=fileset.entries(staging, {AUDIO_ID}),
    )


__all__ = ["IngestError", "IngestSpec", "Plan", "ingest", "probe"]
