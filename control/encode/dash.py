"""A static DASH MPD over the same CMAF segments the HLS playlists use (pure).

One AdaptationSet per video codec (a player switches bitrate within a codec, never across) plus
one for audio; each Representation carries its own SegmentTemplate with an explicit
SegmentTimeline, because segment durations vary by a frame (NTSC rates) and audio segments do not
line up with video ones exactly.
"""

from __future__ import annotations

import base64
import xml.etree.ElementTree as ET
from dataclasses import dataclass

from .crypto import CLEARKEY_SYSTEM_ID, COMMON_SYSTEM_ID, TitleKey, pssh_box
from .package import Track

NS_MPD = "urn:mpeg:dash:schema:mpd:2011"
NS_CENC = "urn:mpeg:cenc:2013"
NS_DASHIF = "https://dashif.org/CPS"


@dataclass(frozen=True)
class ClearKeyInfo:
    key: TitleKey
    license_url: str


def _duration(seconds: float) -> str:
    return f"PT{seconds:.3f}S"


def _timeline(track: Track) -> ET.Element:
    timeline = ET.Element("SegmentTimeline")
    runs: list[list[int]] = []  # [t, d, repeat]
    for seg in track.segments:
        if runs and runs[-1][1] == seg.duration and runs[-1][0] + runs[-1][1] * (runs[-1][2] + 1) == seg.start:
            runs[-1][2] += 1
        else:
            runs.append([seg.start, seg.duration, 0])
    for t, d, r in runs:
        attrs = {"t": str(t), "d": str(d)}
        if r:
            attrs["r"] = str(r)
        ET.SubElement(timeline, "S", attrs)
    return timeline


def _template(track: Track) -> ET.Element:
    tmpl = ET.Element(
        "SegmentTemplate",
        {
            "timescale": str(track.timescale),
            "initialization": "$RepresentationID$/init.mp4",
            "media": "$RepresentationID$/seg_$Number%05d$.m4s",
            "startNumber": str(track.segments[0].number),
        },
    )
    tmpl.append(_timeline(track))
    return tmpl


def _protection(parent: ET.Element, ck: ClearKeyInfo) -> None:
    ET.SubElement(
        parent,
        "ContentProtection",
        {
            "schemeIdUri": "urn:mpeg:dash:mp4protection:2011",
            "value": "cenc",
            f"{{{NS_CENC}}}default_KID": ck.key.kid_uuid,
        },
    )
    clearkey = ET.SubElement(
        parent, "ContentProtection", {"schemeIdUri": f"urn:uuid:{CLEARKEY_SYSTEM_ID}", "value": "ClearKey1.0"}
    )
    laurl = ET.SubElement(clearkey, f"{{{NS_DASHIF}}}Laurl", {"Lic_type": "EME-1.0"})
    laurl.text = ck.license_url
    common = ET.SubElement(parent, "ContentProtection", {"schemeIdUri": f"urn:uuid:{COMMON_SYSTEM_ID}"})
    pssh = ET.SubElement(common, f"{{{NS_CENC}}}pssh")
    pssh.text = base64.b64encode(pssh_box(ck.key.kid)).decode()


def mpd(videos: list[Track], audio: Track | None, duration: float, clearkey: ClearKeyInfo | None = None) -> str:
    ET.register_namespace("", NS_MPD)
    ET.register_namespace("cenc", NS_CENC)
    ET.register_namespace("dashif", NS_DASHIF)
    root = ET.Element(
        f"{{{NS_MPD}}}MPD",
        {
            "profiles": "urn:mpeg:dash:profile:isoff-live:2011",
            "type": "static",
            "mediaPresentationDuration": _duration(duration),
            "minBufferTime": "PT2.000S",
        },
    )
    period = ET.SubElement(root, "Period", {"id": "0", "start": "PT0S"})
    families: dict[str, list[Track]] = {}
    for track in videos:
        families.setdefault(track.codec_family, []).append(track)
    set_id = 0
    for family in sorted(families, key=lambda f: (f != "h264", f)):
        tracks = sorted(families[family], key=lambda t: t.peak_bitrate)
        set_id += 1
        aset = ET.SubElement(
            period,
            "AdaptationSet",
            {
                "id": str(set_id),
                "contentType": "video",
                "mimeType": "video/mp4",
                "segmentAlignment": "true",
                "startWithSAP": "1",
                "maxWidth": str(max(t.width for t in tracks)),
                "maxHeight": str(max(t.height for t in tracks)),
            },
        )
        if clearkey is not None:
            _protection(aset, clearkey)
        for track in tracks:
            rep = ET.SubElement(
                aset,
                "Representation",
                {
                    "id": track.id,
                    "bandwidth": str(track.peak_bitrate),
                    "codecs": track.codec,
                    "width": str(track.width),
                    "height": str(track.height),
                    "sar": "1:1",
                    **({"frameRate": _rate(track)} if track.fps is not None else {}),
                },
            )
            rep.append(_template(track))
    if audio is not None:
        set_id += 1
        aset = ET.SubElement(
            period,
            "AdaptationSet",
            {"id": str(set_id), "contentType": "audio", "mimeType": "audio/mp4", "lang": "und",
             "segmentAlignment": "true", "startWithSAP": "1"},
        )
        if clearkey is not None:
            _protection(aset, clearkey)
        rep = ET.SubElement(
            aset,
            "Representation",
            {"id": audio.id, "bandwidth": str(audio.peak_bitrate), "codecs": audio.codec, "audioSamplingRate": "48000"},
        )
        ET.SubElement(
            rep,
            "AudioChannelConfiguration",
            {"schemeIdUri": "urn:mpeg:dash:23003:3:audio_channel_configuration:2011", "value": "2"},
        )
        rep.append(_template(audio))
    ET.indent(root)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def _rate(track: Track) -> str:
    assert track.fps is not None
    return str(track.fps.numerator) if track.fps.denominator == 1 else f"{track.fps.numerator}/{track.fps.denominator}"
