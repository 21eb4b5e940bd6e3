"""Appliance metadata from operator input, and the one-time enrollment token exchange.

Pure validation (:func:`meta_from_json`) is kept apart from the exchange so both the enrollment
and the later ``PATCH`` of an appliance refuse the same bad input with the same message.  The token
is random and shown once; only its SHA-256 is stored, and it is spent atomically on first use.
"""

from __future__ import annotations

import hashlib
import math
import re
import secrets
from collections.abc import Mapping
from dataclasses import asdict, replace
from typing import Any

from shared.errors import InvalidInput
from shared.ids import check_id

from .steering import validate_prefixes
from .store import ApplianceMeta

ENROLL_PREFIX = "nce_"
_WINDOW_RE = re.compile(r"([01]\d|2[0-3]):[0-5]\d-([01]\d|2[0-3]):[0-5]\d")
_FIELDS = {"site", "region", "isp", "asn", "prefixes", "lat", "lon", "disk_bytes", "bandwidth_bps",
           "fill_window", "load_threshold"}
MAX_TTL_S = 30 * 86_400


def new_enrollment_token() -> str:
    return ENROLL_PREFIX + secrets.token_urlsafe(32)


def token_sha256(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _number(doc: Mapping[str, Any], key: str, lo: float, hi: float) -> float | None:
    value = doc.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) \
            or not lo <= value <= hi:
        raise InvalidInput(f"{key} must be a number in [{lo:g}, {hi:g}]")
    return float(value)


def _int(doc: Mapping[str, Any], key: str, hi: int) -> int | None:
    value = doc.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= hi:
        raise InvalidInput(f"{key} must be an integer in [0, {hi}]")
    return value


def _text(doc: Mapping[str, Any], key: str, limit: int = 200) -> str | None:
    value = doc.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > limit or not value.isprintable():
        raise InvalidInput(f"{key} must be printable text of at most {limit} characters")
    return value


def meta_from_json(doc: object, base: ApplianceMeta | None = None) -> ApplianceMeta:
    """Appliance metadata from a JSON object; fields left out keep ``base``'s values (a partial update)."""
    if not isinstance(doc, Mapping):
        raise InvalidInput("expected a JSON object")
    unknown = sorted(set(doc) - _FIELDS - {"appliance_id", "ttl_s"})
    if unknown:
        raise InvalidInput(f"unknown field {str(unknown[0])[:40]!r}")
    if base is None:
        site = doc.get("site")
        base = ApplianceMeta(site=check_id(site, "site"), region=check_id(doc.get("region", site), "region"))
    changes: dict[str, Any] = {}
    for key in ("site", "region"):
        if doc.get(key) is not None:
            changes[key] = check_id(doc[key], key)
    if (isp := _text(doc, "isp")) is not None:
        changes["isp"] = isp
    if (window := _text(doc, "fill_window", 11)) is not None:
        if window and not _WINDOW_RE.fullmatch(window):
            raise InvalidInput("fill_window must be HH:MM-HH:MM (local to the appliance) or empty")
        changes["fill_window"] = window
    if (asn := _int(doc, "asn", 2**32 - 1)) is not None:
        changes["asn"] = asn
    if (disk := _int(doc, "disk_bytes", 2**62)) is not None:
        changes["disk_bytes"] = disk
    if (bw := _int(doc, "bandwidth_bps", 2**50)) is not None:
        changes["bandwidth_bps"] = bw
    if "lat" in doc or "lon" in doc:
        lat, lon = _number(doc, "lat", -90, 90), _number(doc, "lon", -180, 180)
        if (lat is None) != (lon is None):
            raise InvalidInput("give both lat and lon, or neither")
        changes["lat"], changes["lon"] = lat, lon
    if (threshold := _number(doc, "load_threshold", 0.01, 1e9)) is not None:
        changes["load_threshold"] = threshold
    if "prefixes" in doc:
        prefixes = doc["prefixes"]
        if not isinstance(prefixes, list) or len(prefixes) > 100_000:
            raise InvalidInput("prefixes must be a list of at most 100000 CIDR strings")
        changes["prefixes"] = validate_prefixes(prefixes)
    return replace(base, **changes)


def meta_json(meta: ApplianceMeta) -> dict[str, Any]:
    out = asdict(meta)
    out["prefixes"] = list(meta.prefixes)
    return out


def enrollment_ttl(doc: Mapping[str, Any], default_s: float) -> float:
    ttl = _number(doc, "ttl_s", 60, MAX_TTL_S)
    return default_s if ttl is None else ttl
