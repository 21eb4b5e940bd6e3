"""What an ingest is asked to do, and the renditions it decides to make.

Plain frozen dataclasses so a job can cross a process boundary (pickled to a worker) and be
recorded as JSON next to the title.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from shared.ids import check_id

from .errors import BadSpec

Codec = Literal["h264", "hevc", "av1"]
LadderMode = Literal["auto", "fixed"]
Encryption = Literal["none", "cenc", "aes128"]
RateControl = Literal["capped-crf", "abr"]

CODECS: tuple[Codec, ...] = ("h264", "hevc", "av1")
#: Segment lengths outside this range break either player start-up (long) or CDN efficiency (short).
MIN_SEGMENT_SECONDS = 1.0
MAX_SEGMENT_SECONDS = 10.0


@dataclass(frozen=True)
class IngestSpec:
    """One ``nearcast title ingest`` request, validated on construction."""

    title_id: str
    name: str
    genres: tuple[str, ...] = ()
    codecs: tuple[Codec, ...] = ("h264",)
    ladder: LadderMode = "auto"
    #: How per-title (``auto``) rungs are encoded: ``capped-crf`` gives each rung the CRF that the
    #: trial encodes say lands its average on the hull bitrate, with the VBV cap on peaks; ``abr``
    #: asks for the hull bitrate as an average.  The fixed ladder is always ABR (its rungs are
    #: bitrates, with no measured curve to map them to a CRF).
    rate_control: RateControl = "capped-crf"
    segment_seconds: float = 4.0
    encrypt: Encryption = "none"
    #: Worker processes for chunk-parallel encoding; ``None`` means one per CPU.
    workers: int | None = None
    #: Encoder threads inside each worker; ``None`` shares the CPUs out among the workers.
    encoder_threads: int | None = None
    #: x264/x265 preset; the default trades a little efficiency for a farm that keeps up.
    preset: str = "veryfast"
    #: Upper bound on the rungs per codec in the ladder.
    max_rungs: int = 6
    #: Where players fetch the HLS AES-128 key; ``{title_id}`` is substituted.  Served by the
    #: control plane, which checks the play token: the key itself never enters the origin.
    aes128_key_uri: str = "/v1/keys/{title_id}/aes128"
    #: The ClearKey license endpoint announced in the MPD (``{title_id}`` substituted).
    clearkey_license_url: str = "/v1/license/clearkey/{title_id}"
    artwork_candidates: int = 4

    def __post_init__(self) -> None:
        try:
            check_id(self.title_id, "title id")
        except Exception as exc:
            raise BadSpec(str(exc)) from None
        if not self.name.strip() or len(self.name) > 300 or not self.name.isprintable():
            raise BadSpec("title name must be 1-300 printable characters")
        if len(self.genres) > 20 or any(
            not isinstance(g, str) or not 1 <= len(g) <= 40 or not g.isprintable() for g in self.genres
        ):
            raise BadSpec("genres: at most 20, each 1-40 printable characters")
        if not self.codecs or any(c not in CODECS for c in self.codecs) or len(set(self.codecs)) != len(self.codecs):
            raise BadSpec(f"codecs must be a non-empty, distinct subset of {','.join(CODECS)}: got {self.codecs!r}")
        if "h264" not in self.codecs:
            raise BadSpec("h264 is always encoded: every player can decode it")
        if self.ladder not in ("auto", "fixed"):
            raise BadSpec(f"ladder must be auto or fixed, not {self.ladder!r}")
        if self.rate_control not in ("capped-crf", "abr"):
            raise BadSpec(f"rate control must be capped-crf or abr, not {self.rate_control!r}")
        if self.encrypt not in ("none", "cenc", "aes128"):
            raise BadSpec(f"encrypt must be none, cenc or aes128, not {self.encrypt!r}")
        if not MIN_SEGMENT_SECONDS <= self.segment_seconds <= MAX_SEGMENT_SECONDS:
            raise BadSpec(f"segment seconds must be within {MIN_SEGMENT_SECONDS:g}-{MAX_SEGMENT_SECONDS:g}")
        if self.workers is not None and not 1 <= self.workers <= 64:
            raise BadSpec("workers must be 1-64")
        if self.encoder_threads is not None and not 1 <= self.encoder_threads <= 64:
            raise BadSpec("encoder threads must be 1-64")
        if not 1 <= self.max_rungs <= 12:
            raise BadSpec("max rungs must be 1-12")
        if self.preset not in _PRESETS:
            raise BadSpec(f"unknown preset {self.preset!r}")
        if not 0 <= self.artwork_candidates <= 20:
            raise BadSpec("artwork candidates must be 0-20")


_PRESETS = {"ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow"}


@dataclass(frozen=True)
class VideoRung:
    """One video rendition: a codec at a resolution and a target average bitrate (bits/s).

    With ``crf`` set the rung is encoded at that constant rate factor and ``bitrate`` is the
    average the trial encodes predict for it; either way the VBV cap (``maxrate``, ``bufsize``)
    derives from ``bitrate``, so peaks stay bounded.
    """

    codec: Codec
    width: int
    height: int
    bitrate: int
    crf: float | None = None

    @property
    def id(self) -> str:
        return f"{self.codec}_{self.height}p_{self.bitrate // 1000}k"

    @property
    def maxrate(self) -> int:
        return self.bitrate * 3 // 2

    @property
    def bufsize(self) -> int:
        return self.bitrate * 2

    @property
    def rate_control(self) -> RateControl:
        return "abr" if self.crf is None else "capped-crf"

    def abr(self) -> VideoRung:
        """The same rung asking for its bitrate as an ABR average instead of a CRF."""
        return VideoRung(self.codec, self.width, self.height, self.bitrate)

    def to_dict(self) -> dict[str, object]:
        d: dict[str, object] = {"id": self.id, "codec": self.codec, "width": self.width, "height": self.height,
                                "bitrate": self.bitrate, "rate_control": self.rate_control,
                                "maxrate": self.maxrate, "bufsize": self.bufsize}
        if self.crf is not None:
            d["crf"] = self.crf
        return d
