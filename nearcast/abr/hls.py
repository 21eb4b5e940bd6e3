"""A small, strict HLS playlist parser for what players need: variants, audio renditions, segments.

Only the tags an ABR client acts on are interpreted; others are skipped.  Malformed input raises
:class:`~shared.errors.InvalidInput` with the line number.  Sizes are bounded so a hostile playlist
cannot make the client allocate without limit.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from urllib.parse import urljoin

from shared.errors import InvalidInput

MAX_PLAYLIST_BYTES = 4 * 1024 * 1024
MAX_ENTRIES = 100_000

_ATTR_RE = re.compile(r'([A-Z0-9-]+)=("[^"]*"|[^,]*)')


class PlaylistError(InvalidInput):
    pass


@dataclass(frozen=True)
class Variant:
    uri: str
    bandwidth: int
    average_bandwidth: int | None = None
    codecs: str = ""
    resolution: tuple[int, int] | None = None
    frame_rate: float | None = None
    audio_group: str | None = None

    @property
    def height(self) -> int:
        return self.resolution[1] if self.resolution else 0


@dataclass(frozen=True)
class AudioRendition:
    group_id: str
    name: str
    uri: str | None
    default: bool = False


@dataclass(frozen=True)
class MasterPlaylist:
    variants: list[Variant]
    audio: list[AudioRendition] = field(default_factory=list)

    def audio_for(self, variant: Variant) -> AudioRendition | None:
        group = [a for a in self.audio if a.group_id == variant.audio_group and a.uri]
        return next((a for a in group if a.default), group[0] if group else None)


@dataclass(frozen=True)
class Segment:
    uri: str
    duration: float
    byterange: tuple[int, int] | None = None  # (length, offset)


@dataclass(frozen=True)
class MediaPlaylist:
    target_duration: float
    segments: list[Segment]
    init_uri: str | None = None
    ended: bool = False
    encrypted: bool = False

    @property
    def duration(self) -> float:
        return sum(s.duration for s in self.segments)


def parse_attributes(text: str, line_no: int) -> dict[str, str]:
    attrs: dict[str, str] = {}
    pos = 0
    while pos < len(text):
        m = _ATTR_RE.match(text, pos)
        if not m:
            raise PlaylistError(f"line {line_no}: malformed attribute list")
        value = m.group(2)
        attrs[m.group(1)] = value[1:-1] if value.startswith('"') else value
        pos = m.end()
        if pos < len(text):
            if text[pos] != ",":
                raise PlaylistError(f"line {line_no}: malformed attribute list")
            pos += 1
    return attrs


def _lines(text: str | bytes) -> list[str]:
    if isinstance(text, bytes):
        if len(text) > MAX_PLAYLIST_BYTES:
            raise PlaylistError("playlist too large")
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError:
            raise PlaylistError("playlist is not UTF-8") from None
    if len(text) > MAX_PLAYLIST_BYTES:
        raise PlaylistError("playlist too large")
    lines = [line.strip() for line in text.lstrip("\ufeff").splitlines()]
    if not lines or lines[0] != "#EXTM3U":
        raise PlaylistError("not an HLS playlist (no #EXTM3U)")
    return lines


def _int(value: str, what: str, line_no: int) -> int:
    try:
        n = int(value)
    except ValueError:
        raise PlaylistError(f"line {line_no}: {what} must be an integer") from None
    if n < 0:
        raise PlaylistError(f"line {line_no}: {what} must be >= 0")
    return n


def _float(value: str, what: str, line_no: int) -> float:
    try:
        x = float(value)
    except ValueError:
        raise PlaylistError(f"line {line_no}: {what} must be a number") from None
    if not (0 <= x < 1e7):
        raise PlaylistError(f"line {line_no}: {what} out of range")
    return x


def _uri(value: str, line_no: int) -> str:
    if not value or any(c in value for c in "\x00\r\n") or len(value) > 4096:
        raise PlaylistError(f"line {line_no}: bad URI")
    return value


def parse_master(text: str | bytes) -> MasterPlaylist:
    lines = _lines(text)
    variants: list[Variant] = []
    audio: list[AudioRendition] = []
    pending: dict[str, str] | None = None
    pending_line = 0
    for no, line in enumerate(lines[1:], start=2):
        if not line:
            continue
        if line.startswith("#EXT-X-STREAM-INF:"):
            pending = parse_attributes(line.split(":", 1)[1], no)
            pending_line = no
        elif line.startswith("#EXT-X-MEDIA:"):
            attrs = parse_attributes(line.split(":", 1)[1], no)
            if attrs.get("TYPE") == "AUDIO":
                if "GROUP-ID" not in attrs:
                    raise PlaylistError(f"line {no}: audio rendition without GROUP-ID")
                audio.append(AudioRendition(attrs["GROUP-ID"], attrs.get("NAME", ""),
                                            _uri(attrs["URI"], no) if "URI" in attrs else None,
                                            attrs.get("DEFAULT") == "YES"))
        elif line.startswith("#EXTINF"):
            raise PlaylistError(f"line {no}: a media playlist, not a master playlist")
        elif line.startswith("#"):
            continue
        else:
            if pending is None:
                raise PlaylistError(f"line {no}: URI without #EXT-X-STREAM-INF")
            if "BANDWIDTH" not in pending:
                raise PlaylistError(f"line {pending_line}: EXT-X-STREAM-INF without BANDWIDTH")
            res = None
            if "RESOLUTION" in pending:
                w, _, h = pending["RESOLUTION"].partition("x")
                res = (_int(w, "RESOLUTION", pending_line), _int(h, "RESOLUTION", pending_line))
            variants.append(Variant(
                _uri(line, no), _int(pending["BANDWIDTH"], "BANDWIDTH", pending_line),
                _int(pending["AVERAGE-BANDWIDTH"], "AVERAGE-BANDWIDTH", pending_line)
                if "AVERAGE-BANDWIDTH" in pending else None,
                pending.get("CODECS", ""), res,
                _float(pending["FRAME-RATE"], "FRAME-RATE", pending_line) if "FRAME-RATE" in pending else None,
                pending.get("AUDIO")))
            pending = None
            if len(variants) > 1000:
                raise PlaylistError("too many variants")
    if not variants:
        raise PlaylistError("master playlist has no variants")
    return MasterPlaylist(variants, audio)


def parse_media(text: str | bytes) -> MediaPlaylist:
    lines = _lines(text)
    target: float | None = None
    segments: list[Segment] = []
    init: str | None = None
    ended = encrypted = False
    duration: float | None = None
    byterange: tuple[int, int] | None = None
    next_offset = 0
    for no, line in enumerate(lines[1:], start=2):
        if not line:
            continue
        if line.startswith("#EXT-X-TARGETDURATION:"):
            target = _float(line.split(":", 1)[1], "TARGETDURATION", no)
        elif line.startswith("#EXTINF:"):
            duration = _float(line.split(":", 1)[1].split(",", 1)[0], "EXTINF duration", no)
        elif line.startswith("#EXT-X-MAP:"):
            attrs = parse_attributes(line.split(":", 1)[1], no)
            if "URI" not in attrs:
                raise PlaylistError(f"line {no}: EXT-X-MAP without URI")
            init = _uri(attrs["URI"], no)
        elif line.startswith("#EXT-X-BYTERANGE:"):
            spec = line.split(":", 1)[1]
            length_s, _, offset_s = spec.partition("@")
            length = _int(length_s, "BYTERANGE", no)
            offset = _int(offset_s, "BYTERANGE", no) if offset_s else next_offset
            byterange = (length, offset)
            next_offset = offset + length
        elif line.startswith("#EXT-X-KEY:"):
            attrs = parse_attributes(line.split(":", 1)[1], no)
            encrypted = attrs.get("METHOD", "NONE") != "NONE"
        elif line == "#EXT-X-ENDLIST":
            ended = True
        elif line.startswith("#EXT-X-STREAM-INF"):
            raise PlaylistError(f"line {no}: a master playlist, not a media playlist")
        elif line.startswith("#"):
            continue
        else:
            if duration is None:
                raise PlaylistError(f"line {no}: segment URI without #EXTINF")
            segments.append(Segment(_uri(line, no), duration, byterange))
            duration, byterange = None, None
            if len(segments) > MAX_ENTRIES:
                raise PlaylistError("too many segments")
    if target is None:
        raise PlaylistError("media playlist without #EXT-X-TARGETDURATION")
    if not segments:
        raise PlaylistError("media playlist has no segments")
    return MediaPlaylist(target, segments, init, ended, encrypted)


def resolve(base: str, uri: str) -> str:
    return urljoin(base, uri)
