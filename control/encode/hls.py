"""HLS playlists over the CMAF tracks (pure: tracks in, playlist text out).

Media playlists use ``EXT-X-MAP`` for the init segment; the master names an audio group and
states peak (``BANDWIDTH``) and average bitrates measured from the segments actually written.
I-frame playlists point, by byte range, at each segment's leading IDR, so trick play reuses the
media segments instead of needing separate files.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .package import Track

AUDIO_GROUP = "aac"


@dataclass(frozen=True)
class HlsKey:
    """How segments are protected, as a playlist announces it."""

    method: str  # "AES-128" | "SAMPLE-AES-CTR"
    uri: str
    keyformat: str | None = None


def media_playlist_path(track: Track) -> str:
    return f"{track.id}/playlist.m3u8"


def iframe_playlist_path(track: Track) -> str:
    return f"{track.id}/iframes.m3u8"


def _target_duration(track: Track) -> int:
    return max(1, math.ceil(max(s.duration for s in track.segments) / track.timescale - 1e-6))


def _key_line(key: HlsKey | None) -> list[str]:
    if key is None:
        return []
    attrs = f'METHOD={key.method},URI="{key.uri}"'
    if key.keyformat:
        attrs += f',KEYFORMAT="{key.keyformat}",KEYFORMATVERSIONS="1"'
    return [f"#EXT-X-KEY:{attrs}"]


def media_playlist(track: Track, key: HlsKey | None = None) -> str:
    # The key line follows EXT-X-MAP: the init segment stays clear, so no explicit IV is needed
    # for it, and each segment's AES-128 IV is its media sequence number (its ``number``).
    lines = [
        "#EXTM3U",
        "#EXT-X-VERSION:7",
        f"#EXT-X-TARGETDURATION:{_target_duration(track)}",
        f"#EXT-X-MEDIA-SEQUENCE:{track.segments[0].number}",
        "#EXT-X-PLAYLIST-TYPE:VOD",
        "#EXT-X-INDEPENDENT-SEGMENTS",
        '#EXT-X-MAP:URI="init.mp4"',
        *_key_line(key),
    ]
    for seg in track.segments:
        lines += [f"#EXTINF:{seg.duration / track.timescale:.6f},", seg.path.rsplit("/", 1)[-1]]
    lines.append("#EXT-X-ENDLIST")
    return "\n".join(lines) + "\n"


def iframe_playlist(track: Track, key: HlsKey | None = None) -> str:
    lines = [
        "#EXTM3U",
        "#EXT-X-VERSION:7",
        f"#EXT-X-TARGETDURATION:{_target_duration(track)}",
        f"#EXT-X-MEDIA-SEQUENCE:{track.segments[0].number}",
        "#EXT-X-PLAYLIST-TYPE:VOD",
        "#EXT-X-I-FRAMES-ONLY",
        '#EXT-X-MAP:URI="init.mp4"',
        *_key_line(key),
    ]
    for seg in track.segments:
        lines += [
            f"#EXTINF:{seg.duration / track.timescale:.6f},",
            f"#EXT-X-BYTERANGE:{seg.keyframe_bytes}@0",
            seg.path.rsplit("/", 1)[-1],
        ]
    lines.append("#EXT-X-ENDLIST")
    return "\n".join(lines) + "\n"


def iframe_bandwidth(track: Track) -> int:
    return max(round(s.keyframe_bytes * 8 * track.timescale / s.duration) for s in track.segments)


def master_playlist(videos: list[Track], audio: Track | None, *, iframes: bool = True) -> str:
    """The multivariant playlist, variants sorted by bandwidth within each codec."""
    lines = ["#EXTM3U", "#EXT-X-VERSION:7", "#EXT-X-INDEPENDENT-SEGMENTS"]
    if audio is not None:
        lines.append(
            f'#EXT-X-MEDIA:TYPE=AUDIO,GROUP-ID="{AUDIO_GROUP}",NAME="Main",LANGUAGE="und",DEFAULT=YES,'
            f'AUTOSELECT=YES,CHANNELS="2",URI="{media_playlist_path(audio)}"'
        )
    ordered = sorted(videos, key=lambda t: (t.codec_family != "h264", t.codec_family, t.peak_bitrate))
    for track in ordered:
        peak, avg = track.peak_bitrate, track.average_bitrate
        codecs = track.codec
        if audio is not None:
            peak, avg, codecs = peak + audio.peak_bitrate, avg + audio.average_bitrate, f"{codecs},{audio.codec}"
        attrs = [
            f"BANDWIDTH={peak}",
            f"AVERAGE-BANDWIDTH={avg}",
            f'CODECS="{codecs}"',
            f"RESOLUTION={track.width}x{track.height}",
        ]
        if track.fps is not None:
            attrs.append(f"FRAME-RATE={float(track.fps):.3f}")
        if audio is not None:
            attrs.append(f'AUDIO="{AUDIO_GROUP}"')
        lines += ["#EXT-X-STREAM-INF:" + ",".join(attrs), media_playlist_path(track)]
    if iframes:
        for track in ordered:
            lines.append(
                f"#EXT-X-I-FRAME-STREAM-INF:BANDWIDTH={iframe_bandwidth(track)},CODECS=\"{track.codec}\","
                f'RESOLUTION={track.width}x{track.height},URI="{iframe_playlist_path(track)}"'
            )
    return "\n".join(lines) + "\n"
