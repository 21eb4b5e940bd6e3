"""The worker-process side: decode a chunk of the master once, encode it into every rung.

Functions here are top-level and take picklable jobs so a spawn-started process pool can run
them.  Each chunk is written as its own fragmented MP4 (one fragment per segment, because
keyframes are forced only at segment starts); :mod:`control.encode.package` joins them.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from typing import TypeVar

import av
from av.video.frame import PictureType
from av.video.reformatter import Interpolation, VideoReformatter

from .errors import EncodeFailed, one_line
from .spec import Codec, VideoRung

#: Fragment per keyframe, fragments self-contained (CMAF), composition starting at zero.
MOVFLAGS = "frag_keyframe+empty_moov+default_base_moof+negative_cts_offsets+cmaf"
AUDIO_RATE = 48000
AUDIO_BITRATE = 128_000
T = TypeVar("T")
_SVT_PRESETS = {"ultrafast": 10, "superfast": 9, "veryfast": 8, "faster": 8, "fast": 7, "medium": 6, "slow": 4}


@dataclass(frozen=True)
class CencKey:
    kid: str
    key: str


@dataclass(frozen=True)
class ChunkJob:
    master: str
    start_time: float
    fps: Fraction
    start_frame: int
    end_frame: int
    keyframes: tuple[int, ...]
    gop: int
    rungs: tuple[VideoRung, ...]
    out_dir: str
    index: int
    preset: str = "veryfast"
    threads: int = 1
    cenc: CencKey | None = None
    #: Decode and scale in a helper thread while the encoders run (see :func:`encode_chunk`).
    prefetch: bool = True


def encoder_settings(codec: Codec, rung: VideoRung, gop: int, preset: str, threads: int) -> tuple[str, dict[str, str]]:
    """The FFmpeg encoder and its options for ``rung``.

    Closed GOPs, no scene-cut keyframes (a keyframe inside a segment would split it) and IDR
    frames forced where the pipeline asks.  Rate control: the rung's CRF when it has one (capped
    CRF), else its average bitrate (set as the codec context's ``bit_rate``, see
    :func:`rc_bit_rate`); both under a VBV cap of 1.5x over 2 s.  A CRF rung without a bitrate
    (a trial encode mapping a CRF to the rate it produces) is uncapped.

    Not bit-reproducible everywhere: on CPUs with AVX-512 (seen on AMD Zen 4) libx264's
    macroblock-tree asm reads heap memory it has not written, so the same job can come out a few
    bits different from one run to the next (PSNR within ~0.01 dB). Left as it is: limiting x264 to
    AVX2 or turning mbtree off would cost speed or quality for every title. Tests that compare bytes
    run their encodes with a fixed heap (``fixed_heap`` in ``tests/control/encode/conftest.py``).
    """
    vbv = {"maxrate": str(rung.maxrate), "bufsize": str(rung.bufsize)} if rung.bitrate else {}
    crf = {} if rung.crf is None else {"crf": f"{rung.crf:g}"}
    if codec == "h264":
        params = f"keyint={gop}:min-keyint={gop}:scenecut=0:open-gop=0:bframes=3:log-level=error"
        return "libx264", {"preset": preset, "profile": "high", "x264-params": params, "forced-idr": "1",
                           "threads": str(threads), **crf, **vbv}
    if codec == "hevc":
        params = (f"keyint={gop}:min-keyint={gop}:scenecut=0:open-gop=0:bframes=3:log-level=error"
                  f":pools={threads}:frame-threads={min(threads, 2)}")
        return "libx265", {"preset": preset, "x265-params": params, "forced-idr": "1", **crf, **vbv}
    # SVT-AV1 accepts a max bitrate only in CRF mode: ABR AV1 rungs are plain VBR around the target,
    # CRF rungs are capped like the others.
    params = f"keyint={gop}:scd=0:lp={threads}:irefresh-type=2"
    cap = {} if rung.crf is None else vbv
    return "libsvtav1", {"preset": str(_SVT_PRESETS.get(preset, 8)), "svtav1-params": params, **crf, **cap}


def rc_bit_rate(rung: VideoRung) -> int:
    """The codec context's ``bit_rate``: the ABR target, or 0 for a CRF rung (bit_rate would mean ABR)."""
    return rung.bitrate if rung.crf is None else 0


def mux_options(cenc: CencKey | None) -> dict[str, str]:
    opts = {"movflags": MOVFLAGS}
    if cenc is not None:
        opts |= {"encryption_scheme": "cenc-aes-ctr", "encryption_key": cenc.key, "encryption_kid": cenc.kid}
    return opts


def chunk_path(out_dir: str, rung: VideoRung, index: int) -> str:
    return os.path.join(out_dir, f"{rung.id}.chunk{index:04d}.mp4")


def cfr_frames(
    container: av.container.InputContainer, start_time: float, fps: Fraction, first: int, end: int, threads: int = 0
) -> Iterator[tuple[int, av.VideoFrame]]:
    """Output frames ``first..end-1`` of a constant-rate version of the video.

    Output frame *n* shows the latest source frame at or before *n/fps* (plus half a frame), so a
    variable-rate source gets frames repeated or dropped rather than timestamps the muxer rejects.
    """
    vs = container.streams.video[0]
    if not vs.codec_context.is_open:
        vs.thread_type = "AUTO"
        vs.codec_context.thread_count = threads
    half = 0.5 / float(fps)
    if first > 0 and vs.time_base:
        target = start_time + float(first / fps) - 2 * half
        container.seek(max(0, int(target / vs.time_base)), stream=vs, backward=True)
    n = first
    prev: av.VideoFrame | None = None
    for frame in container.decode(vs):
        ft = (frame.time if frame.time is not None else 0.0) - start_time
        while prev is not None and n < end and float(n / fps) + half < ft:
            if n >= first:
                yield n, prev
            n += 1
        prev = frame
        if n >= end:
            return
    while prev is not None and n < end:
        yield n, prev
        n += 1


def encode_chunk(job: ChunkJob) -> dict[str, str]:
    """Encode frames ``[start_frame, end_frame)`` into one fMP4 per rung; returns rung id -> path."""
    outs: list[tuple[VideoRung, av.container.OutputContainer, av.video.stream.VideoStream, VideoReformatter]] = []
    paths: dict[str, str] = {}
    keyframes = set(job.keyframes)
    try:
        with av.open(job.master, metadata_errors="ignore") as src:
            for rung in job.rungs:
                name, options = encoder_settings(rung.codec, rung, job.gop, job.preset, job.threads)
                path = chunk_path(job.out_dir, rung, job.index)
                out = av.open(path, "w", format="mp4", options=mux_options(job.cenc))
                stream = out.add_stream(name, rate=job.fps)
                assert isinstance(stream, av.video.stream.VideoStream)
                stream.width, stream.height, stream.pix_fmt = rung.width, rung.height, "yuv420p"
                stream.time_base = 1 / job.fps
                stream.bit_rate = rc_bit_rate(rung)
                stream.codec_context.options = options
                if rung.codec == "hevc":
                    stream.codec_tag = "hvc1"
                outs.append((rung, out, stream, VideoReformatter()))
                paths[rung.id] = path
            count = 0
            frame_tb = 1 / job.fps

            def scaled_frames() -> Iterator[tuple[int, list[av.VideoFrame]]]:
                for n, frame in cfr_frames(src, job.start_time, job.fps, job.start_frame, job.end_frame, job.threads):
                    yield n, [scaler.reformat(frame, width=r.width, height=r.height, format="yuv420p",
                                              interpolation=Interpolation.BICUBIC, threads=job.threads)
                              for r, _, _, scaler in outs]

            # Decode and scale in a second thread while this one encodes: FFmpeg releases the GIL,
            # so the stages overlap the way the ffmpeg CLI's threaded pipeline does.
            for n, frames in prefetch(scaled_frames(), depth=4) if job.prefetch else scaled_frames():
                for (_rung, out, stream, _), scaled in zip(outs, frames, strict=True):
                    scaled.pts = n
                    # Not stream.time_base: the muxer changes that to its own clock on the first packet.
                    scaled.time_base = frame_tb
                    # Decoded frames can arrive flagged I; left alone, every one would become a keyframe.
                    scaled.pict_type = PictureType.I if n in keyframes else PictureType.NONE
                    for packet in stream.encode(scaled):
                        out.mux(packet)
                count += 1
            if count != job.end_frame - job.start_frame:
                raise EncodeFailed(f"chunk {job.index}: decoded {count} of {job.end_frame - job.start_frame} frames")
            for _rung, out, stream, _ in outs:
                for packet in stream.encode():
                    out.mux(packet)
    except av.error.FFmpegError as exc:
        raise EncodeFailed(f"chunk {job.index}: {one_line(str(exc), 160)}") from None
    finally:
        for _, out, _, _ in outs:
            try:
                out.close()
            except av.error.FFmpegError:
                pass
    return paths


_DONE = object()


def prefetch(items: Iterator[T], depth: int) -> Iterator[T]:
    """Run ``items`` in a helper thread, at most ``depth`` ahead; its exceptions surface here."""
    q: queue.Queue[object] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        q.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put(_DONE)
        except BaseException as exc:  # handed to the consumer, re-raised there
            q.put(exc)

    worker = threading.Thread(target=produce, name="decode-prefetch", daemon=True)
    worker.start()
    try:
        while True:
            item = q.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item  # type: ignore[misc]
    finally:
        stop.set()
        while worker.is_alive():
            try:
                q.get_nowait()
            except queue.Empty:
                worker.join(0.05)


@dataclass(frozen=True)
class AudioJob:
    master: str
    start_time: float
    duration: float
    segment_seconds: float
    out_path: str
    cenc: CencKey | None = None


def encode_audio(job: AudioJob) -> str:
    """AAC-LC stereo 48 kHz, fragmented every ``segment_seconds``, trimmed to the video's span."""
    total = round(job.duration * AUDIO_RATE)
    options = mux_options(job.cenc)
    options["movflags"] = options["movflags"].replace("frag_keyframe+", "")
    options["frag_duration"] = str(round(job.segment_seconds * 1_000_000))
    written = 0
    try:
        with av.open(job.master, metadata_errors="ignore") as src, av.open(
            job.out_path, "w", format="mp4", options=options
        ) as out:
            stream = out.add_stream("aac", rate=AUDIO_RATE)
            stream.layout = "stereo"
            stream.bit_rate = AUDIO_BITRATE
            resampler = av.AudioResampler(format="fltp", layout="stereo", rate=AUDIO_RATE, frame_size=1024)
            for frame in _audio_frames(src, job.start_time, resampler):
                if written >= total:
                    break
                frame.pts = written
                frame.time_base = Fraction(1, AUDIO_RATE)
                written += frame.samples
                for packet in stream.encode(frame):
                    out.mux(packet)
            for packet in stream.encode():
                out.mux(packet)
    except av.error.FFmpegError as exc:
        raise EncodeFailed(f"audio: {one_line(str(exc), 160)}") from None
    return job.out_path


def _audio_frames(
    src: av.container.InputContainer, start_time: float, resampler: av.AudioResampler
) -> Iterator[av.AudioFrame]:
    stream = src.streams.audio[0]
    for frame in src.decode(stream):
        if frame.time is not None and frame.time + frame.samples / max(frame.sample_rate, 1) <= start_time:
            continue
        yield from resampler.resample(frame)
    yield from resampler.resample(None)
