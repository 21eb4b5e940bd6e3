"""The control plane's settings (``nearcast control serve --config control.toml``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from shared.config import non_negative, port_check, positive, section, setting
from shared.mqtt import MqttSettings

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
class ControlConfig:
    http: HttpSettings = section(HttpSettings, "The operator and client API.")
    state: StateSettings = section(StateSettings, "Where the control plane keeps its state.")
    mqtt: MqttSettings = section(MqttSettings, "Connection to the MQTT broker.")
    auth: AuthSettings = section(AuthSettings, "Operator authentication.")
    fleet: FleetSettings = section(FleetSettings, "Appliance liveness.")

    @property
    def tokens_path(self) -> Path:
        return self.auth.tokens_file or self.state.dir / "operator-tokens.json"
