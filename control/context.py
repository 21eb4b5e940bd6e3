"""The control plane's one context object, stored on the aiohttp app under :data:`CTX`."""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiohttp import web

from shared.mqtt import MqttSession
from shared.signing import Signer
from shared.tasks import TaskGroup
from shared.tokens import TokenKeys

from .config import ControlConfig
from .fleet import Fleet
from .ingest import TelemetryIngest
from .metrics import ControlMetrics
from .planner import PlannerConfig
from .popularity import DemandModel
from .prefixes import IPNetwork
from .registry import RegistryView
from .steering import GeoLocator
from .store import Store

if TYPE_CHECKING:  # the encoder stack (PyAV, numpy) is imported by the ingest routes, not here
    from .bundles import BundleRepo
    from .commands import CommandOutbox
    from .deploy import DeployService
    from .jobs import IngestJobs
    from .recs_service import RecsService


@dataclass
class ControlContext:
    config: ControlConfig
    metrics: ControlMetrics
    session: MqttSession
    fleet: Fleet
    store: Store
    registry: RegistryView
    demand: DemandModel
    ingest: TelemetryIngest
    keys: TokenKeys
    signer: Signer
    planner: PlannerConfig
    trusted: tuple[IPNetwork, ...]
    api_url: str
    locator: GeoLocator | None = None
    tasks: TaskGroup = field(default_factory=lambda: TaskGroup("control"))
    #: One plan at a time: a periodic run and an operator's request must not interleave generations.
    fill_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    #: One writer of the broker's passwd/acl files at a time (``credentials.sync_broker_files``).
    broker_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    #: The ingest job queue, while the app runs (``api_ingest.lifecycle``).
    jobs: IngestJobs | None = None
    #: The last play decisions, for the operator view (``GET /v1/steer/recent``).
    recent_steering: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=100))
    #: Events, rows and training, while the app runs (``api_recs.lifecycle``).
    recs: RecsService | None = None
    #: Sealed edge model bundles and their rollout (``api_models.lifecycle``).
    bundles: BundleRepo | None = None
    deploy: DeployService | None = None
    #: Commands to appliances, spooled on disk until the broker has them (``control.commands``).
    commands: CommandOutbox | None = None


CTX = web.AppKey("control", ControlContext)
