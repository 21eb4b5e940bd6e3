from __future__ import annotations

import dataclasses
import typing
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from control.config import ENV_PREFIX as CONTROL_PREFIX
from control.config import ControlConfig
from edge.config import ENV_PREFIX, EdgeConfig
from shared import config as cfg
from shared.errors import ConfigError


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "edge.toml"
    p.write_text(text)
    return p


def test_defaults_and_file_values(tmp_path: Path) -> None:
    p = _write(tmp_path, '[http]\nport = 9000\n[appliance]\nid = "a-1"\nprefixes = ["10.0.0.0/8"]\n')
    conf = cfg.load(EdgeConfig, p, env_prefix=ENV_PREFIX, env={})
    assert conf.http.port == 9000 and conf.appliance.id == "a-1"
    assert conf.appliance.prefixes == ["10.0.0.0/8"]
    assert conf.http.host == "127.0.0.1"
    assert isinstance(conf.cache.dir, Path)


def test_env_overrides_file(tmp_path: Path) -> None:
    p = _write(tmp_path, "[http]\nport = 9000\n")
    env = {"NEARCAST_EDGE_HTTP_PORT": "9100", "NEARCAST_EDGE_APPLIANCE_PREFIXES": "10.0.0.0/8, 10.1.0.0/16",
           "NEARCAST_EDGE_MQTT_TLS": "yes", "NEARCAST_EDGE_CACHE_DIR": "/srv/cache"}
    conf = cfg.load(EdgeConfig, p, env_prefix=ENV_PREFIX, env=env)
    assert conf.http.port == 9100
    assert conf.appliance.prefixes == ["10.0.0.0/8", "10.1.0.0/16"]
    assert conf.mqtt.tls is True and conf.cache.dir == Path("/srv/cache")


@pytest.mark.parametrize(("text", "needle"), [
    ("[http]\nprot = 1\n", "unknown setting http.prot (did you mean 'port'?)"),
    ("[htp]\nport = 1\n", "unknown section [htp] (did you mean 'http'?)"),
    ('[http]\nport = "x"\n', "http.port: expected an integer"),
    ("[http]\nport = 70000\n", "http.port: must be a port number"),
    ("[http]\nport = true\n", "http.port: expected an integer"),
    ("[appliance]\nprefixes = \"10.0.0.0/8\"\n", "appliance.prefixes: expected a list"),
    ('[appliance]\nid = "a/b"\n', "appliance.id: must be 1-64"),
    ("[cache]\ncapacity_bytes = -5\n", "cache.capacity_bytes: must be > 0"),
    ("http = 5\n", "[http] must be a table"),
    ("[http\n", "not valid TOML"),
])
def test_errors_name_the_file_and_the_key(tmp_path: Path, text: str, needle: str) -> None:
    p = _write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        cfg.load(EdgeConfig, p, env_prefix=ENV_PREFIX, env={})
    assert str(p) in str(info.value)
    assert needle in str(info.value)
    assert "\n" not in str(info.value)


def test_bad_env_value_names_the_variable(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"\$NEARCAST_EDGE_HTTP_PORT: expected an integer"):
        cfg.load(EdgeConfig, None, env_prefix=ENV_PREFIX, env={"NEARCAST_EDGE_HTTP_PORT": "eighty"})


def test_missing_and_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="missing.toml: config file not found"):
        cfg.load(EdgeConfig, tmp_path / "missing.toml", env_prefix=ENV_PREFIX, env={})
    with pytest.raises(ConfigError, match="is a directory"):
        cfg.load(EdgeConfig, tmp_path, env_prefix=ENV_PREFIX, env={})
    (tmp_path / "bin.toml").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ConfigError, match="not valid TOML"):
        cfg.load(EdgeConfig, tmp_path / "bin.toml", env_prefix=ENV_PREFIX, env={})


@pytest.mark.parametrize("cls", [EdgeConfig, ControlConfig])
def test_every_setting_is_documented_with_a_default(cls: type) -> None:
    rows = cfg.describe(cls)
    assert rows
    for sname, key, label, _default, help_text in rows:
        assert help_text and len(help_text) > 10, f"{sname}.{key} has no help"
        assert label in ("string", "integer", "number", "boolean", "path", "list of string") or "optional" in label
    for f in dataclasses.fields(cls):
        assert f.metadata.get("help"), f"section {f.name} has no help"


@pytest.mark.parametrize(("cls", "prefix"), [(EdgeConfig, ENV_PREFIX), (ControlConfig, CONTROL_PREFIX)])
def test_template_is_valid_toml_that_loads_to_the_defaults(tmp_path: Path, cls: type, prefix: str) -> None:
    text = cfg.render_template(cls, "t")
    uncommented = "\n".join(line[2:] if line.startswith("# ") and " = " in line else line
                            for line in text.splitlines())
    p = tmp_path / "t.toml"
    p.write_text(uncommented)
    assert cfg.load(cls, p, env_prefix=prefix, env={}) == cfg.build(cls, {}, source="defaults")
    md = cfg.render_markdown(cls, "x", prefix)
    for sname, key, *_ in cfg.describe(cls):
        assert f"`{sname}.{key}`" in md and f"`{prefix}{sname}_{key}`".upper() in md


def test_docs_file_is_current() -> None:
    """docs/configuration.md is generated from the settings table; regenerate with `make docs`."""
    root = Path(__file__).resolve().parents[2]
    expected = (cfg.render_markdown(EdgeConfig, "`edge` settings", ENV_PREFIX) + "\n"
                + cfg.render_markdown(ControlConfig, "`control` settings", CONTROL_PREFIX))
    actual = (root / "docs" / "configuration.md").read_text()
    assert expected in actual, "docs/configuration.md is stale: run `make docs`"


@settings(max_examples=500, deadline=None)
@given(st.text(max_size=200))
def test_random_toml_text_only_raises_config_error(text: str) -> None:
    import tempfile

    with tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False) as fh:
        fh.write(text)
    try:
        cfg.load(EdgeConfig, Path(fh.name), env_prefix=ENV_PREFIX, env={})
    except ConfigError:
        pass
    finally:
        Path(fh.name).unlink()


@settings(max_examples=500, deadline=None)
@given(st.dictionaries(st.sampled_from(["http", "cache", "appliance", "mqtt", "bogus"]),
                       st.dictionaries(st.sampled_from(["port", "dir", "id", "prefixes", "host", "tls", "x"]),
                                       st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5)
                                       | st.lists(st.text(max_size=5), max_size=3), max_size=4), max_size=3))
def test_random_documents_only_raise_config_error(doc: dict[str, typing.Any]) -> None:
    try:
        cfg.build(EdgeConfig, doc, source="x")
    except ConfigError:
        pass
