"""Just enough ISO-BMFF to cut, re-time and describe fragmented MP4 (pure, no I/O).

The muxer writes each encoded chunk as ``ftyp moov (moof mdat)*``.  Joining chunks needs the
fragments re-timed (each chunk's muxer starts its clock at zero) and renumbered; the manifests need
segment durations, the codec string and the byte range of each segment's leading keyframe.
FFmpeg can do none of that for us through PyAV, and all of it is a few fixed-offset fields.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass

from .errors import EncodeFailed

_CONTAINERS = {b"moov", b"trak", b"mdia", b"minf", b"stbl", b"moof", b"traf", b"mvex", b"sinf", b"schi"}


@dataclass(frozen=True)
class Box:
    type: bytes
    offset: int
    size: int
    header: int

    @property
    def body(self) -> int:
        return self.offset + self.header

    @property
    def end(self) -> int:
        return self.offset + self.size


def iter_boxes(data: bytes, start: int = 0, end: int | None = None) -> Iterator[Box]:
    stop = len(data) if end is None else end
    off = start
    while off + 8 <= stop:
        size, typ = struct.unpack_from(">I4s", data, off)
        header = 8
        if size == 1:
            if off + 16 > stop:
                raise EncodeFailed("MP4 box header truncated")
            size = struct.unpack_from(">Q", data, off + 8)[0]
            header = 16
        elif size == 0:
            size = stop - off
        if size < header or off + size > stop:
            raise EncodeFailed(f"MP4 box {typ!r} at {off} overruns its parent")
        yield Box(typ, off, size, header)
        off += size


def find(data: bytes, path: tuple[bytes, ...], start: int = 0, end: int | None = None) -> Box | None:
    """The first box along ``path`` (e.g. ``(b"moov", b"trak", b"mdia", b"mdhd")``)."""
    for box in iter_boxes(data, start, end):
        if box.type == path[0]:
            if len(path) == 1:
                return box
            if box.type in _CONTAINERS:
                found = find(data, path[1:], box.body, box.end)
                if found is not None:
                    return found
    return None


def split_fmp4(data: bytes) -> tuple[bytes, list[bytes]]:
    """``(init segment, [moof+mdat fragments])``; index boxes (sidx, mfra) are dropped."""
    init = b""
    fragments: list[bytes] = []
    pending: int | None = None
    for box in iter_boxes(data):
        if box.type in (b"ftyp", b"moov"):
            init += data[box.offset : box.end]
        elif box.type in (b"styp", b"prft", b"moof"):
            if pending is None:
                pending = box.offset
        elif box.type == b"mdat":
            if pending is None:
                raise EncodeFailed("mdat without moof: not a fragmented MP4")
            fragments.append(data[pending : box.end])
            pending = None
    if not init or find(init, (b"moov",)) is None:
        raise EncodeFailed("fragmented MP4 has no moov")
    return init, fragments


@dataclass(frozen=True)
class FragmentInfo:
    base_time: int
    duration: int
    samples: int
    #: Bytes from the start of the fragment to the end of the first sample: the keyframe range.
    first_sample_end: int


def _fullbox(data: bytes, box: Box) -> tuple[int, int]:
    word = struct.unpack_from(">I", data, box.body)[0]
    return word >> 24, word & 0xFFFFFF


def fragment_info(frag: bytes, default_duration: int = 0) -> FragmentInfo:
    moof = find(frag, (b"moof",))
    tfdt = find(frag, (b"moof", b"traf", b"tfdt"))
    tfhd = find(frag, (b"moof", b"traf", b"tfhd"))
    trun = find(frag, (b"moof", b"traf", b"trun"))
    if moof is None or tfdt is None or tfhd is None or trun is None:
        raise EncodeFailed("fragment lacks moof/traf/tfdt/tfhd/trun")
    version, _ = _fullbox(frag, tfdt)
    base = struct.unpack_from(">Q" if version == 1 else ">I", frag, tfdt.body + 4)[0]
    _, hflags = _fullbox(frag, tfhd)
    pos = tfhd.body + 8
    for bit, width in ((0x1, 8), (0x2, 4)):
        if hflags & bit:
            pos += width
    dflt_dur = struct.unpack_from(">I", frag, pos)[0] if hflags & 0x8 else default_duration
    pos += 4 if hflags & 0x8 else 0
    dflt_size = struct.unpack_from(">I", frag, pos)[0] if hflags & 0x10 else 0
    _, tflags = _fullbox(frag, trun)
    count = struct.unpack_from(">I", frag, trun.body + 4)[0]
    pos = trun.body + 8
    data_offset = 0
    if tflags & 0x1:
        data_offset = struct.unpack_from(">i", frag, pos)[0]
        pos += 4
    if tflags & 0x4:
        pos += 4
    total = 0
    first_size = dflt_size
    for i in range(count):
        dur, size = dflt_dur, dflt_size
        if tflags & 0x100:
            dur = struct.unpack_from(">I", frag, pos)[0]
            pos += 4
        if tflags & 0x200:
            size = struct.unpack_from(">I", frag, pos)[0]
            pos += 4
        pos += 4 if tflags & 0x400 else 0
        pos += 4 if tflags & 0x800 else 0
        if i == 0:
            first_size = size
        total += dur
    if not tflags & 0x1:
        mdat = find(frag, (b"mdat",))
        data_offset = (mdat.body - moof.offset) if mdat else 0
    return FragmentInfo(base, total, count, moof.offset + data_offset + first_size)


def retime_fragment(frag: bytes, time_offset: int, sequence: int) -> bytes:
    """Shift the fragment's decode time by ``time_offset`` ticks and renumber it ``sequence``."""
    out = bytearray(frag)
    tfdt = find(frag, (b"moof", b"traf", b"tfdt"))
    mfhd = find(frag, (b"moof", b"mfhd"))
    if tfdt is None or mfhd is None:
        raise EncodeFailed("fragment lacks tfdt or mfhd")
    version, _ = _fullbox(frag, tfdt)
    if version == 1:
        base = struct.unpack_from(">Q", frag, tfdt.body + 4)[0]
        struct.pack_into(">Q", out, tfdt.body + 4, base + time_offset)
    else:
        base = struct.unpack_from(">I", frag, tfdt.body + 4)[0]
        if base + time_offset >= 1 << 32:
            raise EncodeFailed("fragment time overflows a version-0 tfdt")
        struct.pack_into(">I", out, tfdt.body + 4, base + time_offset)
    struct.pack_into(">I", out, mfhd.body + 4, sequence)
    return bytes(out)


@dataclass(frozen=True)
class TrackInfo:
    timescale: int
    codec: str
    width: int
    height: int
    default_duration: int
    #: The sample description: chunks of one rendition must agree on it to be joinable.
    stsd: bytes


def track_info(init: bytes) -> TrackInfo:
    mdhd = find(init, (b"moov", b"trak", b"mdia", b"mdhd"))
    stsd = find(init, (b"moov", b"trak", b"mdia", b"minf", b"stbl", b"stsd"))
    if mdhd is None or stsd is None:
        raise EncodeFailed("init segment lacks mdhd or stsd")
    version, _ = _fullbox(init, mdhd)
    timescale = struct.unpack_from(">I", init, mdhd.body + (20 if version == 1 else 12))[0]
    trex = find(init, (b"moov", b"mvex", b"trex"))
    default_duration = struct.unpack_from(">I", init, trex.body + 12)[0] if trex is not None else 0
    entry = next(iter_boxes(init, stsd.body + 8, stsd.end))
    width = height = 0
    if entry.type in (b"mp4a", b"enca"):
        children = entry.body + 28
    else:
        width, height = struct.unpack_from(">HH", init, entry.body + 24)
        children = entry.body + 78
    boxes = {b.type: b for b in iter_boxes(init, children, entry.end)}
    codec = _codec_string(init, entry.type, boxes)
    return TrackInfo(timescale, codec, width, height, default_duration, init[stsd.offset : stsd.end])


def _codec_string(data: bytes, entry: bytes, boxes: dict[bytes, Box]) -> str:
    if b"avcC" in boxes:
        b = boxes[b"avcC"].body
        return f"avc1.{data[b + 1]:02x}{data[b + 2]:02x}{data[b + 3]:02x}"
    if b"hvcC" in boxes:
        b = boxes[b"hvcC"].body
        space, tier, profile = data[b + 1] >> 6, (data[b + 1] >> 5) & 1, data[b + 1] & 0x1F
        compat = int.from_bytes(data[b + 2 : b + 6], "big")
        compat_rev = int(f"{compat:032b}"[::-1], 2)
        constraints = list(data[b + 6 : b + 12])
        while constraints and constraints[-1] == 0:
            constraints.pop()
        level = data[b + 12]
        tag = "hvc1" if entry in (b"hvc1", b"encv") else entry.decode()
        space_tag = "ABC"[space - 1] if space else ""
        parts = [tag, f"{space_tag}{profile}", f"{compat_rev:x}", f"{'H' if tier else 'L'}{level}"]
        return ".".join(parts + [f"{c:x}" for c in constraints])
    if b"av1C" in boxes:
        b = boxes[b"av1C"].body
        profile, level = data[b + 1] >> 5, data[b + 1] & 0x1F
        tier, high, twelve = data[b + 2] >> 7, (data[b + 2] >> 6) & 1, (data[b + 2] >> 5) & 1
        depth = 12 if twelve else 10 if high else 8
        return f"av01.{profile}.{level:02d}{'H' if tier else 'M'}.{depth:02d}"
    if entry in (b"mp4a", b"enca"):
        return "mp4a.40.2"
    raise EncodeFailed(f"no codec configuration in sample entry {entry!r}")
