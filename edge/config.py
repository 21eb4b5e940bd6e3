"""The edge appliance's settings (``nearcast edge serve --config edge.toml``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from shared.config import non_negative, port_check, positive, section, setting
from shared.loops import event_loop_check
from shared.mqtt import MqttSettings

ENV_PREFIX = "NEARCAST_EDGE_"


def _id_check(value: str) -> str | None:
    from shared.ids import is_valid_id

    return None if is_valid_id(value) else "must be 1-64 of [A-Za-z0-9._-]"


def _unit(value: float) -> str | None:
    return None if 0 <= value <= 1 else "must be in [0, 1]"


@dataclass(frozen=True)
class ApplianceSettings:
    id: str = setting("edge-1", "This appliance's id; also its MQTT user name.", check=_id_check)
    site: str = setting("site-1", "Site (point of presence) the appliance is racked in.", check=_id_check)
    isp: str = setting("", "Name of the ISP hosting the appliance.")
    asn: int = setting(0, "Autonomous system number of the hosting ISP (0 if unknown).", check=non_negative)
    prefixes: list[str] = setting([], "Client prefixes this appliance serves (CIDR, IPv4 or IPv6), as announced.")
    latitude: float = setting(0.0, "Location for steering by distance (degrees).")
    longitude: float = setting(0.0, "Location for steering by distance (degrees).")


@dataclass(frozen=True)
class HttpSettings:
    host: str = setting("127.0.0.1", "Address to listen on.")
    port: int = setting(8080, "Port to listen on (0 picks a free one).", check=port_check)
    public_url: str = setting("", "Base URL clients use to reach this appliance; derived from host:port if empty.")
    shutdown_timeout_s: float = setting(10.0, "On SIGTERM, how long in-flight responses may take to finish.",
                                        check=non_negative)
    max_in_flight: int = setting(0, "Content requests in progress beyond which new ones are redirected "
                                    "elsewhere as health misses (0: no limit).", check=non_negative)
    fast_path: bool = setting(True, "Serve content requests with the purpose-built HTTP/1.1 server "
                                    "(edge.fastpath; other routes are handed to aiohttp on the same port); "
                                    "false: aiohttp serves everything.")
    event_loop: str = setting("uvloop", "Event loop: uvloop (libuv; 1.17x-1.19x the manifest requests/s of "
                                        "asyncio's in bench/serve.py) or asyncio (the standard library's).",
                              check=event_loop_check)
    max_header_bytes: int = setting(16 * 1024, "Largest request head (request line and headers) accepted; "
                                               "a larger one gets 431.", check=positive)
    max_connections: int = setting(10_000, "Open client connections beyond which a new one gets 503 and is "
                                           "closed (the fast path's, and aiohttp's own).", check=positive)
    idle_timeout_s: float = setting(75.0, "How long an idle keep-alive connection is kept open.", check=positive)
    header_timeout_s: float = setting(10.0, "How long a client may take to send a whole request head once it "
                                            "started (slow clients are closed with 408).",
                                      check=positive)


@dataclass(frozen=True)
class CacheSettings:
    dir: Path = setting(Path("/var/cache/nearcast"), "Where cached file sets live.")
    capacity_bytes: int = setting(100 * 1024**3, "Disk budget for cached content.", check=positive)
    memory_bytes: int = setting(64 * 1024**2, "Memory for manifests and init segments, per serving process.",
                                check=non_negative)
    eviction_half_life_s: float = setting(3600.0, "How much popularity extends a set's life beyond the plan: "
                                                  "each doubling of hits counts as this many seconds of recency.",
                                          check=non_negative)
    reserve_bytes: int = setting(64 * 1024**2, "Space a fill leaves free on the cache filesystem (for the index, "
                                               "the telemetry spool and model bundles); a fill that does not fit "
                                               "stops with the status 'disk full' before fetching anything.",
                                 check=non_negative)


@dataclass(frozen=True)
class SecuritySettings:
    token_keys_file: Path | None = setting(None, "JSON file of URL-token HMAC keys (from enrollment).")
    token_leeway_s: float = setting(30.0, "Clock skew tolerated when checking token expiry.", check=non_negative)
    control_public_keys_file: Path | None = setting(
        None, "JSON file {key_id: base64 raw Ed25519 public key} of the control plane, to verify file-set "
              "manifests. Without it no fill is accepted.")


@dataclass(frozen=True)
class FillSettings:
    concurrency: int = setting(4, "Files fetched at the same time.", check=positive)
    rate_limit_bps: int = setting(0, "Fill bandwidth cap in bits per second when the desired state sets none "
                                     "(0: unlimited).", check=non_negative)
    window: str = setting("", "Local hours fills run, HH:MM-HH:MM (may wrap midnight) when the desired state "
                              "sets none; empty: any time.")
    retry_s: float = setting(30.0, "After a failed fill, how long before the plan is tried again.", check=positive)
    max_manifest_bytes: int = setting(8 * 1024**2, "Largest file-set manifest accepted.", check=positive)


@dataclass(frozen=True)
class ScrubSettings:
    interval_s: float = setting(3600.0, "Pause between two scrub passes, each re-hashing every file of every complete "
                                        "file set against its manifest digest (0: no scrub).", check=non_negative)
    rate_bytes_s: int = setting(16 * 1024**2, "Bytes per second the scrub reads, so it never competes with "
                                              "serving for the disk.", check=positive)
    verify_on_read: bool = setting(True, "Hash manifests and init segments against the index when they are read "
                                         "into memory; a mismatch is redirected like a miss and re-filled.")


@dataclass(frozen=True)
class TelemetrySettings:
    interval_s: float = setting(10.0, "Seconds between telemetry messages to the control plane.", check=positive)
    spool_dir: Path | None = setting(None, "Where telemetry waits on disk until the broker acknowledges it "
                                           "(kept across broker outages and restarts); empty: "
                                           "<cache.dir>/spool/telemetry.")
    spool_max_bytes: int = setting(16 * 1024**2, "Disk budget of the telemetry spool; when it is full the oldest "
                                                 "samples are dropped and counted "
                                                 "(nearcast_edge_telemetry_dropped_total).", check=positive)


@dataclass(frozen=True)
class ControlSettings:
    api_url: str = setting("http://127.0.0.1:8700", "Control plane API base URL.")


@dataclass(frozen=True)
class RerankSettings:
    models_dir: Path | None = setting(None, "Where model bundles are unpacked (active and previous version); "
                                            "empty: <cache.dir>/models.")
    model_retry_s: float = setting(30.0, "After a failed bundle download, how long before it is tried again.",
                                   check=positive)
    candidates_ttl_s: float = setting(60.0, "How long a profile's candidate rows from the control plane are "
                                            "used before being asked for again.", check=positive)
    stale_max_s: float = setting(3600.0, "How old cached candidate rows may be and still be served while the "
                                         "control plane is unreachable.", check=non_negative)
    control_timeout_s: float = setting(0.5, "Longest wait for the control plane's candidate rows.", check=positive)
    control_backoff_s: float = setting(5.0, "After the control plane failed to answer, how long pages use stale "
                                            "rows or local trending without asking it again.", check=non_negative)
    max_profiles: int = setting(10_000, "Profiles whose candidate rows are kept in memory.", check=positive)
    demand_window_s: float = setting(900.0, "Recent local demand (a re-ranking feature) counts requests over "
                                            "this many seconds.", check=positive)
    bandit_epsilon: float = setting(0.1, "Exploration floor of the artwork bandit (every variant keeps at "
                                         "least epsilon / variants probability).", check=_unit)
    bandit_genres: list[str] = setting(["action", "comedy", "drama", "documentary", "family", "thriller"],
                                       "Genres of the profile affinities the artwork bandit uses as context.")


@dataclass(frozen=True)
class EdgeConfig:
    appliance: ApplianceSettings = section(ApplianceSettings, "Identity and network position.")
    http: HttpSettings = section(HttpSettings, "The HTTP server clients and the control plane talk to.")
    cache: CacheSettings = section(CacheSettings, "The on-disk segment cache.")
    mqtt: MqttSettings = section(MqttSettings, "Connection to the MQTT broker.")
    security: SecuritySettings = section(SecuritySettings, "URL tokens and artifact verification.")
    fill: FillSettings = section(FillSettings, "Fetching file sets from peers and the origin.")
    scrub: ScrubSettings = section(ScrubSettings, "Finding damaged cached files and filling them again.")
    telemetry: TelemetrySettings = section(TelemetrySettings, "Telemetry sent over MQTT.")
    control: ControlSettings = section(ControlSettings, "Where the control plane is.")
    rerank: RerankSettings = section(RerankSettings, "Model bundles and the home-page re-ranker.")
