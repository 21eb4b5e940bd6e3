"""The message types both daemons speak over MQTT, and their registry.

Status and desired state are retained (the latest wins; a returning appliance catches up from the
broker), commands and acks are QoS 1 events, idempotent by envelope id.  Large artifacts (file sets,
model bundles) never travel here: only descriptors with a URL, size and sha256 do.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from .envelope import MessageType, Registry
from .ids import check_id

ApplianceState = Literal["online", "offline", "draining"]


@dataclass(frozen=True)
class ApplianceStatus:
    """Retained on ``.../status``; the broker publishes the ``offline`` Last Will for us."""

    state: ApplianceState
    software: str = ""
    started_at: float = 0.0
    http_url: str = ""
    reason: str = ""


@dataclass(frozen=True)
class ControlStatus:
    state: Literal["online", "offline"]
    api_url: str = ""
    software: str = ""


@dataclass(frozen=True)
class TitleDemand:
    requests: int = 0
    bytes: int = 0


@dataclass(frozen=True)
class Telemetry:
    """Periodic counters; ``seq`` increases by one per sample so gaps and duplicates are visible."""

    seq: int
    interval_s: float
    counters: dict[str, float] = field(default_factory=dict)
    gauges: dict[str, float] = field(default_factory=dict)
    titles: dict[str, TitleDemand] = field(default_factory=dict)


@dataclass(frozen=True)
class Ack:
    """Answer to a command or a desired-state generation (``command_id`` is the envelope id)."""

    command_id: str
    command_type: str
    status: Literal["accepted", "rejected", "progress", "done", "failed"]
    reason: str = ""
    progress: float | None = None
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Ping:
    """A command that does nothing but get acked: liveness of the command path."""

    note: str = ""


@dataclass(frozen=True)
class SetDraining:
    draining: bool


@dataclass(frozen=True)
class RotateCredentials:
    """The appliance's next broker login, sent only on its own (ACL-protected) commands topic.

    The appliance stores it, reconnects with it and acks ``done`` with ``detail.user`` over the new
    connection; until then the broker accepts the old login too.
    """

    username: str
    password: str = field(repr=False)


@dataclass(frozen=True)
class FillSource:
    url: str
    kind: Literal["peer", "appliance", "origin"]
    appliance_id: str | None = None


@dataclass(frozen=True)
class FileSetRef:
    """A file set the appliance should hold, where to get its signed manifest, and from whom."""

    title_id: str
    version: str
    manifest_url: str
    size: int
    sources: list[FillSource] = field(default_factory=list)

    def __post_init__(self) -> None:
        check_id(self.title_id, "title id")
        check_id(self.version, "file set version")
        if self.size < 0:
            raise ValueError("size must be >= 0")


@dataclass(frozen=True)
class DesiredFill:
    """The complete set of file sets an appliance should hold (retained; a new generation replaces it)."""

    generation: int
    file_sets: list[FileSetRef] = field(default_factory=list)
    fill_window: str = ""
    rate_limit_bps: int = 0


@dataclass(frozen=True)
class ModelDescriptor:
    version: str
    url: str
    size: int
    sha256: str
    signature: str
    key_id: str


@dataclass(frozen=True)
class DesiredModel:
    generation: int
    model: ModelDescriptor | None = None
    deployment_id: str = ""


@dataclass(frozen=True)
class DesiredConfig:
    """Settings pushed by the control plane, applied as a transaction by the appliance."""

    generation: int
    settings: dict[str, Any] = field(default_factory=dict)


REGISTRY = Registry([
    MessageType("appliance.status", 1, ApplianceStatus),
    MessageType("control.status", 1, ControlStatus),
    MessageType("appliance.telemetry", 1, Telemetry),
    MessageType("command.ack", 1, Ack),
    MessageType("command.ping", 1, Ping),
    MessageType("command.set_draining", 1, SetDraining),
    MessageType("command.rotate_credentials", 1, RotateCredentials),
    MessageType("desired.fill", 1, DesiredFill),
    MessageType("desired.model", 1, DesiredModel),
    MessageType("desired.config", 1, DesiredConfig),
])
