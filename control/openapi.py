"""The OpenAPI 3 document of the control API, built from one table of operations.

A test walks the app's router and fails if a route is missing here, so the document cannot drift
from the routes behind it.
"""

from __future__ import annotations

from typing import Any

ID = {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"}
OBJ = {"type": "object"}
HOURS = {"type": "number", "minimum": 0, "exclusiveMinimum": True, "maximum": 9600}
ERROR = {"type": "object", "properties": {"error": {"type": "string"}}, "required": ["error"]}

META_PROPS: dict[str, Any] = {
    "site": ID, "region": ID, "isp": {"type": "string", "maxLength": 200}, "asn": {"type": "integer"},
    "prefixes": {"type": "array", "items": {"type": "string"}}, "lat": {"type": "number"},
    "lon": {"type": "number"}, "disk_bytes": {"type": "integer"}, "bandwidth_bps": {"type": "integer"},
    "fill_window": {"type": "string"}, "load_threshold": {"type": "number"},
}


def _path_params(path: str) -> list[dict[str, Any]]:
    out = []
    for part in path.split("/"):
        if part.startswith("{"):
            name = part[1:-1].split(":")[0]
            schema = {"type": "string"} if name in ("path", "token") else ID
            out.append({"name": name, "in": "path", "required": True, "schema": schema})
    return out


def _q(name: str, schema: dict[str, Any], required: bool = False) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": required, "schema": schema}


# (method, path, summary, public, query params, request body schema, success status)
OPERATIONS: list[tuple[str, str, str, bool, list[dict[str, Any]], dict[str, Any] | None, int]] = [
    ("get", "/healthz", "Liveness of the control plane and its broker link.", True, [], None, 200),
    ("get", "/metrics", "Prometheus metrics of the control plane.", True, [], None, 200),
    ("get", "/v1/openapi.json", "This document.", True, [], None, 200),
    ("get", "/v1/tokens", "List operator tokens (never the tokens themselves).", False, [], None, 200),
    ("post", "/v1/tokens", "Create an operator token; the token is shown once.", False, [],
     {"type": "object", "properties": {"name": ID, "role": {"type": "string", "enum": ["read", "admin"]}},
      "required": ["name"]}, 201),
    ("delete", "/v1/tokens/{name}", "Revoke an operator token.", False, [], None, 200),
    ("get", "/v1/audit", "The audit log, newest first.", False,
     [_q("limit", {"type": "integer", "minimum": 1, "maximum": 1000}), _q("before", {"type": "integer"})], None, 200),
    ("post", "/v1/enrollments", "Create a one-time enrollment token for an appliance.", False, [],
     {"type": "object", "properties": {"appliance_id": ID, "ttl_s": {"type": "number"}, **META_PROPS},
      "required": ["appliance_id", "site"]}, 201),
    ("post", "/v1/enroll", "An appliance redeems its enrollment token for credentials and keys.", True, [],
     {"type": "object", "properties": {"token": {"type": "string"}}, "required": ["token"]}, 201),
    ("get", "/v1/appliances", "Enrolled and seen appliances with their state.", False, [], None, 200),
    ("get", "/v1/appliances/{id}", "One appliance.", False, [], None, 200),
    ("patch", "/v1/appliances/{id}", "Change an appliance's metadata.", False, [],
     {"type": "object", "properties": META_PROPS}, 200),
    ("delete", "/v1/appliances/{id}", "Remove an appliance and revoke its broker credentials.", False, [], None, 200),
    ("post", "/v1/appliances/{id}/ping", "Send a ping command.", False, [], None, 202),
    ("post", "/v1/appliances/{id}/drain", "Steer new sessions away from the appliance.", False, [], None, 202),
    ("post", "/v1/appliances/{id}/undrain", "Undo a drain.", False, [], None, 202),
    ("post", "/v1/appliances/{id}/rotate-credentials", "Give the appliance a new MQTT login without downtime; the "
     "old one is revoked once the appliance reconnected with the new one.", False, [],
     {"type": "object", "properties": {"force": {"type": "boolean"}}, "additionalProperties": False}, 202),
    ("get", "/v1/play/{title_id}", "Ranked, signed HLS and DASH URLs for the calling client.", True,
     [_q("count", {"type": "integer", "minimum": 1, "maximum": 50}),
      _q("as", {"type": "string", "description": "demo only (steering.viewer_override)"})], None, 200),
    ("post", "/v1/license/{token}/{title_id}", "W3C ClearKey license for a CENC title (play token in the path).",
     True, [], {"type": "object", "properties": {"kids": {"type": "array", "items": {"type": "string"}},
                                                 "type": {"type": "string"}}}, 200),
    ("get", "/v1/steer", "The steering decision for a client with every appliance kept or dropped and why.", False,
     [_q("client_ip", {"type": "string"}, True), _q("title", ID, True),
      _q("count", {"type": "integer", "minimum": 1, "maximum": 50})], None, 200),
    ("get", "/v1/titles", "Registered titles.", False, [], None, 200),
    ("post", "/v1/titles", "Register a title published on the origin and sign its file set.", False, [],
     {"type": "object", "properties": {"title_id": ID, "released": {"type": "number"}}, "required": ["title_id"]},
     201),
    ("get", "/v1/titles/{title_id}", "One title.", False, [], None, 200),
    ("get", "/v1/titles/{title_id}/ladder", "The title's ladder: rungs, measured (bitrate, quality) points, source.",
     False, [], None, 200),
    ("get", "/v1/steer/recent", "The last play decisions, newest first.", False, [], None, 200),
    ("put", "/v1/uploads/{upload_id}", "Upload a master (raw bytes, size-capped) for an ingest job.", False, [],
     None, 201),
    ("post", "/v1/titles/ingest", "Start an ingest job: encode a master (upload or ingest-dir path), publish it.",
     False, [], {"type": "object", "properties": {
         "title_id": ID, "name": {"type": "string"}, "genres": {"type": "array", "items": {"type": "string"}},
         "codecs": {"type": "array", "items": {"type": "string", "enum": ["h264", "hevc", "av1"]}},
         "ladder": {"type": "string", "enum": ["auto", "fixed"]}, "segment_seconds": {"type": "number"},
         "encrypt": {"type": "string", "enum": ["none", "cenc", "aes128"]}, "upload_id": ID,
         "path": {"type": "string"}}, "required": ["title_id"]}, 202),
    ("get", "/v1/jobs", "Ingest jobs, newest first.", False, [], None, 200),
    ("get", "/v1/jobs/{job_id}", "One ingest job: state, stage, progress, error.", False, [], None, 200),
    ("post", "/v1/jobs/{job_id}/cancel", "Cancel a queued or running ingest job.", False, [], None, 202),
    ("get", "/v1/filesets/{title_id}/{version}", "A signed file-set manifest.", True, [], None, 200),
    ("get", "/v1/origin/{token}/{title_id}/{path}", "Origin content for fills (token in the path).", True, [],
     None, 200),
    ("get", "/v1/fill/plan", "What a fill plan would change, and its expected offload.", False, [], None, 200),
    ("post", "/v1/fill/plan", "Plan and publish desired fill state.", False, [], None, 200),
    ("get", "/v1/fill/status", "Fill progress per appliance.", False, [], None, 200),
    ("get", "/v1/telemetry/misses", "Misses by cause per site.", False,
     [_q("hours", HOURS)], None, 200),
    ("get", "/v1/telemetry/rollups", "Telemetry rollups.", False,
     [_q("resolution", {"type": "string", "enum": ["60", "3600"]}), _q("appliance", ID),
      _q("hours", HOURS)], None, 200),
    ("post", "/v1/events", "A batch of viewing events (idempotent by event_id); bad events are rejected with a "
     "reason, the rest kept.", True, [], {"type": "object", "properties": {"events": {
         "type": "array", "maxItems": 500, "items": {"type": "object", "properties": {
             "event_id": ID, "type": {"type": "string", "enum": ["play_start", "progress", "complete", "thumbs",
                                                                 "list_add", "list_remove", "search", "impression",
                                                                 "abandon", "qoe"]},
             "profile_id": ID, "title_id": ID, "ts": {"type": "number"}, "region": ID,
             "device": {"type": "string", "enum": ["tv", "mobile", "web", "tablet", "other"]}},
             "required": ["event_id", "type", "profile_id", "ts"]}}}, "required": ["events"]}, 200),
    ("get", "/v1/edges", "The appliances this client should use for its homepage rows, best first.", True,
     [_q("count", {"type": "integer", "minimum": 1, "maximum": 50}),
      _q("as", {"type": "string", "description": "demo only (steering.viewer_override)"})], None, 200),
    ("get", "/v1/artwork/{title_id}/{name}", "One artwork variant (<variant>.jpg) of a published title.", True,
     [], None, 200),
    ("get", "/v1/profiles/{profile_id}/home", "A profile's candidate homepage rows (for the edge re-ranker).",
     True, [], None, 200),
    ("get", "/v1/catalog", "Catalog metadata of every title.", False, [], None, 200),
    ("put", "/v1/catalog", "Merge catalog metadata (up to 1000 titles per request).", False, [],
     {"type": "object", "properties": {"titles": {"type": "array", "items": {"type": "object", "properties": {
         "title_id": ID, "name": {"type": "string"}, "genres": {"type": "array", "items": {"type": "string"}},
         "cast": {"type": "array", "items": {"type": "string"}},
         "directors": {"type": "array", "items": {"type": "string"}},
         "tags": {"type": "array", "items": {"type": "string"}}, "year": {"type": "integer"},
         "description": {"type": "string"}, "artwork": {"type": "array", "items": ID}},
         "required": ["title_id"]}}}, "required": ["titles"]}, 200),
    ("get", "/v1/catalog/{title_id}", "One title's catalog metadata.", False, [], None, 200),
    ("get", "/v1/recs", "The serving recommendation model, the last training job, the event count.", False, [],
     None, 200),
    ("post", "/v1/recs/train", "Train the recommendation pipeline on the event log (a background job).", False,
     [], None, 202),
    ("post", "/v1/experiments", "Start an A/B experiment on the homepage rows (cells: model version or policy).",
     False, [], {"type": "object", "properties": {
         "id": ID, "control": ID, "cells": {"type": "array", "minItems": 2, "maxItems": 8, "items": {
             "type": "object", "properties": {"name": ID, "weight": {"type": "number"}, "model_version": ID,
                                              "policy": {"type": "string", "enum": ["model", "trending"]}},
             "required": ["name"]}}}, "required": ["id", "cells"]}, 201),
    ("get", "/v1/experiments", "Experiments, oldest first.", False, [], None, 200),
    ("post", "/v1/experiments/{experiment_id}/stop", "Stop an experiment (its data stays for the report).", False,
     [], None, 200),
    ("get", "/v1/experiments/{experiment_id}/report", "Per-cell metrics with 95 % intervals and the SRM check.",
     False, [], None, 200),
    ("get", "/v1/recs/export/{name}", "The event log: interactions.csv, catalog.csv, choices.csv or plays.csv.",
     False, [], None, 200),
    ("get", "/v1/models", "Edge model versions built here, and the version the fleet runs.", False, [], None, 200),
    ("post", "/v1/models", "Train and seal an edge re-ranker bundle (impression log, else a seeded synthetic log).",
     False, [], {"type": "object", "properties": {
         "version": ID, "seed": {"type": "integer", "minimum": 0, "maximum": 2**32 - 1},
         "source": {"type": "string", "enum": ["auto", "log", "synthetic"]},
         "pages": {"type": "integer", "minimum": 50, "maximum": 2000}}}, 201),
    ("get", "/v1/models/{version}", "One model version: descriptor and bundle metadata.", False, [], None, 200),
    ("get", "/v1/bundles/{name}", "A sealed model bundle, <version>.ncb (Range requests resume downloads).", True,
     [], None, 200),
    ("get", "/v1/deployment", "The latest model deployment; each appliance's desired and active version.", False,
     [], None, 200),
    ("post", "/v1/deployment", "Deploy a model version in waves, gated on the edges' re-rank health.", False, [],
     {"type": "object", "properties": {
         "version": ID, "waves": {"type": "array", "items": {"type": "number"}, "minItems": 1, "maxItems": 20},
         "bake_s": {"type": "number", "minimum": 0, "maximum": 604800}, "gates": {"type": "object", "properties": {
             **{k: {"type": "number", "minimum": 0} for k in (
                 "max_error_increase", "max_fallback_increase", "p99_slack_ms", "ack_timeout_s", "max_wait_s")},
             "max_p99_ratio": {"type": "number", "minimum": 1}, "min_requests": {"type": "integer", "minimum": 1}}}},
      "required": ["version"]}, 202),
    ("post", "/v1/deployment/rollback", "Roll the latest deployment back to the previous version.", False, [],
     {"type": "object", "properties": {"reason": {"type": "string", "maxLength": 200}}}, 202),
]


def document(server_url: str) -> dict[str, Any]:
    paths: dict[str, Any] = {}
    for method, path, summary, public, query, body, status in OPERATIONS:
        op: dict[str, Any] = {
            "summary": summary,
            "operationId": f"{method}_{path.strip('/').replace('/', '_').replace('{', '').replace('}', '')}",
            "parameters": _path_params(path) + query,
            "responses": {str(status): {"description": "success"},
                          "default": {"description": "error", "content": {"application/json": {"schema": ERROR}}}},
        }
        if body is not None:
            op["requestBody"] = {"required": True, "content": {"application/json": {"schema": body}}}
        op["security"] = [] if public else [{"bearer": []}]
        paths.setdefault(path, {})[method] = op
    return {
        "openapi": "3.0.3",
        "info": {"title": "nearcast control plane", "version": "1"},
        "servers": [{"url": server_url}],
        "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
        "paths": paths,
    }


def route_key(method: str, path: str) -> tuple[str, str]:
    """Normalise an aiohttp route (``{path:.+}``) to the document's form."""
    parts = [p.split(":")[0] + "}" if p.startswith("{") and ":" in p else p for p in path.split("/")]
    return method.lower(), "/".join(parts)
