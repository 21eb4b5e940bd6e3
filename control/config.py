"""The control plane's settings (``nearcast control serve --config control.toml``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from shared.config import non_negative, port_check, positive, section, setting
from shared.mqtt import MqttSettings

from .mosquitto import check_reload

ENV_PREFIX = "NEARCAST_CONTROL_"


@dataclass(frozen=True)
class HttpSettings:
    host: str = setting("127.0.0.1", "Address the API listens on.")
    port: int = setting(8700, "Port the API listens on (0 picks a free one).", check=port_check)
    public_url: str = setting("", "Base URL clients and appliances use; derived from host:port if empty.")
    trusted_proxies: list[str] = setting([], "Proxies (CIDR) whose X-Forwarded-For is believed for client IPs.")
    shutdown_timeout_s: float = setting(10.0, "On SIGTERM, how long in-flight requests may take to finish.",
                                        check=non_negative)
    max_body_bytes: int = setting(1 << 20, "Largest JSON request body accepted.", check=positive)
    max_header_bytes: int = setting(16 * 1024, "Largest request head (request line and headers) accepted; "
                                               "a larger one gets 431 (or 400 for one over-long line).",
                                    check=positive)
    header_timeout_s: float = setting(10.0, "How long a client may take to send a whole request head once it "
                                            "started; slower ones (slowloris) get 408 and are closed.",
                                      check=positive)
    idle_timeout_s: float = setting(75.0, "How long an idle keep-alive connection is kept open.", check=positive)
    max_connections: int = setting(2048, "Open client connections beyond which a new one gets 503 and is closed.",
                                   check=positive)
    body_timeout_s: float = setting(60.0, "How long a JSON request body may take to arrive once its head did; "
                                          "a slower one gets 408 (uploads of masters are not bound by it).",
                                    check=positive)


@dataclass(frozen=True)
class RateLimitSettings:
    operator_rate: float = setting(200.0, "Requests a second each operator token may make on average "
                                          "(0: no limit); beyond it, 429 with Retry-After.", check=non_negative)
    operator_burst: float = setting(2000.0, "Requests an operator token may make at once above its rate.",
                                    check=positive)
    client_rate: float = setting(500.0, "Requests a second each client address (IPv6: its /64) may make to the "
                                        "public client routes (/v1/play, /v1/events, license, enroll, /v1/edges) "
                                        "and to operator routes without a valid token (0: no limit).",
                                 check=non_negative)
    client_burst: float = setting(2000.0, "Requests a client address may make at once above its rate.",
                                  check=positive)


@dataclass(frozen=True)
class StateSettings:
    dir: Path = setting(Path("/var/lib/nearcast"), "State directory: database, keys, origin store.")


@dataclass(frozen=True)
class AuthSettings:
    tokens_file: Path | None = setting(None, "JSON file of operator tokens (SHA-256 hashes with roles); "
                                       "defaults to <state dir>/operator-tokens.json.")


@dataclass(frozen=True)
class FleetSettings:
    heartbeat_ttl_s: float = setting(30.0, "An appliance silent for this long is treated as offline.",
                                     check=positive)


@dataclass(frozen=True)
class SecuritySettings:
    token_keys_file: Path | None = setting(None, "JSON file of URL-token HMAC keys shared with appliances; "
                                           "defaults to <state dir>/token-keys.json (created if missing).")
    signing_key_file: Path | None = setting(None, "Ed25519 key signing file-set manifests; defaults to "
                                            "<state dir>/signing-key.pem (created if missing).")
    play_token_ttl_s: float = setting(6 * 3600.0, "Lifetime of the signed manifest URLs /v1/play hands out.",
                                      check=positive)
    fill_token_ttl_s: float = setting(2 * 86400.0, "Lifetime of the tokens in fill source URLs.", check=positive)
    enrollment_ttl_s: float = setting(86400.0, "Default lifetime of a one-time enrollment token.", check=positive)
    content_keys_dir: Path | None = setting(None, "Where the encoder keeps per-title content keys for the ClearKey "
                                            "license endpoint; defaults to <state dir>/keys.")


@dataclass(frozen=True)
class BrokerSettings:
    public_host: str = setting("", "Broker host handed to enrolling appliances; mqtt.host if empty.")
    public_port: int = setting(0, "Broker port handed to enrolling appliances; mqtt.port if 0.", check=port_check)
    files_dir: Path | None = setting(None, "Where the Mosquitto passwd and acl files are written; "
                                     "defaults to <state dir>/mosquitto.")
    control_username: str = setting("control", "The control plane's MQTT identity in the generated ACL.")
    reload: str = setting("", "How the broker is made to re-read the passwd and acl files after an enrollment, "
                          "removal or credential rotation: 'pid:<pid file>' sends SIGHUP to the process named "
                          "there (Mosquitto), 'command:<command line>' runs a command (e.g. 'command:systemctl "
                          "reload mosquitto'); empty: nothing is sent (the embedded broker watches the files).",
                          check=check_reload)


@dataclass(frozen=True)
class SteeringSettings:
    answers: int = setting(3, "Appliances in a /v1/play answer unless the client asks for another count.",
                           check=positive)
    geoip_db: Path | None = setting(None, "MaxMind-format (.mmdb) database locating clients; without one the "
                                    "matched prefix's site stands in for the client.")
    refresh_s: float = setting(2.0, "Steering snapshot age limit: load changes are seen within this.",
                               check=positive)
    viewer_override: bool = setting(False, "Demo only: let /v1/play?as=IP choose the client address steering "
                                    "uses (URL tokens stay bound to the real connection). Never in production.")


@dataclass(frozen=True)
class TelemetrySettings:
    batch_max: int = setting(2000, "Telemetry samples written in one transaction at most.", check=positive)
    flush_interval_s: float = setting(0.2, "Longest a received sample waits before it is written.",
                                      check=positive)
    queue_max: int = setting(100_000, "Samples buffered for writing; beyond this they are dropped and counted.",
                             check=positive)
    raw_retention_s: float = setting(2 * 86400.0, "How long raw samples are kept.", check=positive)
    minute_retention_s: float = setting(14 * 86400.0, "How long 1-minute rollups are kept.", check=positive)
    hour_retention_s: float = setting(400 * 86400.0, "How long 1-hour rollups and title demand are kept.",
                                      check=positive)


@dataclass(frozen=True)
class FillSettings:
    interval_s: float = setting(900.0, "Seconds between automatic fill plans (0: only on operator request).",
                                check=non_negative)
    min_copies: int = setting(2, "Complete copies a title needs in a region to be live.", check=positive)
    extra_copy_weight: float = setting(0.25, "Worth of a copy beyond min_copies relative to the first.",
                                       check=non_negative)
    hysteresis: float = setting(0.1, "Held content is displaced only by content worth this fraction more.",
                                check=non_negative)
    reserve_fraction: float = setting(0.05, "Share of each appliance's disk never planned.", check=non_negative)
    half_life_s: float = setting(86400.0, "Demand this old counts half as much.", check=positive)
    release_boost: float = setting(1.0, "A new release is forecast at this multiple of the region's 10th title.",
                                   check=non_negative)
    rate_limit_bps: int = setting(0, "Fill rate limit handed to appliances (0: none).", check=non_negative)
    floor_views: float = setting(0.001, "Forecast given to titles nobody watched yet, so spare disk is filled; "
                                 "real demand always outranks it (0: plan only observed demand).",
                                 check=non_negative)


@dataclass(frozen=True)
class IngestSettings:
    dir: Path | None = setting(None, "Server directory whose masters `title ingest` may name by path instead of "
                               "uploading them; unset: uploads only.")
    max_upload_bytes: int = setting(20 << 30, "Largest master PUT /v1/uploads accepts (413 beyond).", check=positive)
    queue_max: int = setting(8, "Ingest jobs waiting to run at most; more are refused (503).", check=positive)
    workers: int = setting(0, "Encoder worker processes per ingest job (0: one per CPU).", check=non_negative)


@dataclass(frozen=True)
class RecsSettings:
    rows_ttl_s: float = setting(30.0, "How long a profile's computed rows are reused before they are rebuilt.",
                                check=positive)
    trending_half_life_s: float = setting(86400.0, "Plays this old count half in Trending Now.", check=positive)
    trending_window_s: float = setting(14 * 86400.0, "Plays older than this are ignored by Trending Now.",
                                       check=positive)
    trending_refresh_s: float = setting(60.0, "Trending scores are recomputed at most this often.", check=positive)
    row_size: int = setting(40, "Titles per row at most.", check=positive)
    explore_epsilon: float = setting(0.2, "Probability that the discovery row's slot is chosen at random.",
                                     check=non_negative)
    new_title_days: float = setting(30.0, "A title published this recently and barely watched is promoted in "
                                    "the discovery row.", check=non_negative)
    train_timeout_s: float = setting(3600.0, "A training job running longer than this is stopped.",
                                     check=positive)


@dataclass(frozen=True)
class ModelSettings:
    tick_s: float = setting(1.0, "How often a model deployment advances: bake ends, ack timeouts, republishing "
                            "desired state that could not be published.", check=positive)
    synthetic_pages: int = setting(600, "Pages of the seeded synthetic viewing log an edge model trains on when "
                                   "the impression log is too small.", check=positive)


@dataclass(frozen=True)
class ControlConfig:
    http: HttpSettings = section(HttpSettings, "The operator and client API.")
    state: StateSettings = section(StateSettings, "Where the control plane keeps its state.")
    mqtt: MqttSettings = section(MqttSettings, "Connection to the MQTT broker.")
    auth: AuthSettings = section(AuthSettings, "Operator authentication.")
    ratelimit: RateLimitSettings = section(RateLimitSettings, "Token-bucket rate limits on the API.")
    fleet: FleetSettings = section(FleetSettings, "Appliance liveness.")
    security: SecuritySettings = section(SecuritySettings, "URL tokens, manifest signing, enrollment.")
    broker: BrokerSettings = section(BrokerSettings, "What enrolling appliances are told about the broker.")
    steering: SteeringSettings = section(SteeringSettings, "Choosing appliances for /v1/play.")
    telemetry: TelemetrySettings = section(TelemetrySettings, "Telemetry ingest and retention.")
    fill: FillSettings = section(FillSettings, "Popularity forecast and fill planning.")
    ingest: IngestSettings = section(IngestSettings, "Title ingest: uploaded masters and encoding jobs.")
    models: ModelSettings = section(ModelSettings, "Edge model bundles and their rollout.")
    recs: RecsSettings = section(RecsSettings, "Recommendations: events, homepage rows, training.")

    @property
    def tokens_path(self) -> Path:
        return self.auth.tokens_file or self.state.dir / "operator-tokens.json"

    @property
    def db_path(self) -> Path:
        return self.state.dir / "control.db"

    @property
    def token_keys_path(self) -> Path:
        return self.security.token_keys_file or self.state.dir / "token-keys.json"

    @property
    def signing_key_path(self) -> Path:
        return self.security.signing_key_file or self.state.dir / "signing-key.pem"

    @property
    def content_keys_dir(self) -> Path:
        return self.security.content_keys_dir or self.state.dir / "keys"

    @property
    def broker_files_dir(self) -> Path:
        return self.broker.files_dir or self.state.dir / "mosquitto"

    @property
    def origin_dir(self) -> Path:
        return self.state.dir / "origin"

    @property
    def models_dir(self) -> Path:
        return self.state.dir / "edge-models"

    @property
    def deploy_state_path(self) -> Path:
        return self.state.dir / "deploy" / "state.json"

    @property
    def recs_dir(self) -> Path:
        return self.state.dir / "recs"
