"""Hostile configuration: random documents and environment overrides over both daemons' real settings
tables.  Loading either succeeds with typed values or raises ConfigError naming what was wrong: the
``section.key`` (or ``$ENV_NAME``) of a value that was supplied, or the unknown section or key."""

from __future__ import annotations

import math
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from control.config import ENV_PREFIX as CONTROL_PREFIX
from control.config import ControlConfig
from edge.config import ENV_PREFIX as EDGE_PREFIX
from edge.config import EdgeConfig
from shared import config as cfg
from shared.errors import ConfigError
from tests.hostile import examples

CLASSES = {"edge": (EdgeConfig, EDGE_PREFIX), "control": (ControlConfig, CONTROL_PREFIX)}
leaf = (st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats() | st.text(max_size=12)
        | st.sampled_from(["", "~", "0", "-1", "1e999", "nan", "127.0.0.1/8", "::1", "/dev/null", "true"]))
value = leaf | st.lists(leaf, max_size=3) | st.dictionaries(st.text(max_size=6), leaf, max_size=2)
env_value = st.text(max_size=12) | st.sampled_from(["", " 1_000 ", "yes", "off", "inf", "-0", "1,2,,3", "9" * 5000])


TABLES = {which: cfg.describe(cls) for which, (cls, _) in CLASSES.items()}  # (section, key, type, default, help)


@st.composite
def documents(draw: st.DrawFn, which: str) -> tuple[dict[str, Any], dict[str, str]]:
    prefix = CLASSES[which][1]
    known = [(s, k) for s, k, *_ in TABLES[which]]
    doc: dict[str, Any] = {}
    for section, key in draw(st.lists(st.sampled_from(known), max_size=6)):
        doc.setdefault(section, {})[key] = draw(value)
    if draw(st.integers(0, 9)) == 0:  # now and then, something that is not in the table at all
        section = draw(st.sampled_from([s for s, _ in known] + ["bogus", "HTTP"]))
        table = doc.setdefault(section, {})
        if isinstance(table, dict):
            table[draw(st.sampled_from(["bogus", "Port", "port "]))] = draw(value)
    if draw(st.integers(0, 19)) == 0:
        doc[draw(st.sampled_from([s for s, _ in known]))] = draw(value)  # a section that is not a table
    env = {f"{prefix}{s}_{k}".upper(): draw(env_value) for s, k in draw(st.lists(st.sampled_from(known), max_size=3))}
    return doc, env


def _check(which: str, doc: dict[str, Any], env: dict[str, str]) -> None:
    cls, prefix = CLASSES[which]
    try:
        built = cfg.build(cls, doc, source="hostile.toml", env_prefix=prefix, env=env)
    except ConfigError as exc:
        message = str(exc)
        named = [f"hostile.toml: {s}.{k}:" for s, t in doc.items() if isinstance(t, dict) for k in t]
        named += [f"${name}:" for name in env]
        named += [f"unknown section [{s}]" for s in doc] + [f"[{s}] must be a table" for s in doc]
        named += [f"unknown setting {s}.{k}" for s, t in doc.items() if isinstance(t, dict) for k in t]
        assert any(n in message for n in named), message
        return
    # Accepted: every value has its declared type (the loader coerced, nothing raw slipped through).
    for section, key, label, *_ in TABLES[which]:
        got = getattr(getattr(built, section), key)
        if label == "integer":
            assert isinstance(got, int) and not isinstance(got, bool)
        elif label == "number":
            assert isinstance(got, float)
        elif label == "boolean":
            assert isinstance(got, bool)
        elif label == "string":
            assert isinstance(got, str)
        elif label.startswith("path"):
            assert got is None or isinstance(got, Path)
        if label in ("integer", "number") and isinstance(got, float) and math.isnan(got):
            pytest.fail(f"{section}.{key} accepted NaN")


@settings(max_examples=examples(150), deadline=None)
@given(documents("edge"))
@example(({"appliance": {"latitude": float("nan")}}, {}))
@example(({}, {"NEARCAST_EDGE_APPLIANCE_LONGITUDE": "nan"}))
def test_hostile_edge_configs_fail_only_with_a_named_config_error(case: tuple[dict[str, Any], dict[str, str]]) -> None:
    _check("edge", *case)


@settings(max_examples=examples(150), deadline=None)
@given(documents("control"))
def test_hostile_control_configs_fail_only_with_a_named_config_error(
        case: tuple[dict[str, Any], dict[str, str]]) -> None:
    _check("control", *case)


@settings(max_examples=examples(200), deadline=None)
@given(st.binary(max_size=200) | st.text(alphabet='[]=."\\\n abc_1#{},\'', max_size=80).map(str.encode))
def test_hostile_config_files_fail_only_with_a_config_error_naming_the_file(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bad.toml"
        path.write_bytes(data)
        try:
            cfg.load(ControlConfig, path, env_prefix=CONTROL_PREFIX, env={})
        except ConfigError as exc:
            assert str(path) in str(exc) or "unknown setting" in str(exc), str(exc)
