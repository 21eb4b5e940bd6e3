"""Daemon configuration: one TOML file per daemon → typed, frozen dataclasses.

Every setting is declared once, with its type, default and help text (:func:`setting`); from that one
table come the loader, the environment overrides, the operator docs (``nearcast config docs``) and a
commented template (``nearcast config template``).  A test fails if a setting has no help.

Files have sections (``[http]``) of keys.  Unknown sections or keys and bad values are
:class:`ConfigError` naming the file and the key.  Environment variables override the file:
``<PREFIX><SECTION>_<KEY>`` in upper case, e.g. ``NEARCAST_EDGE_HTTP_PORT=8081``; lists are
comma-separated and booleans are true/false/1/0/yes/no.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import tomllib
import types
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar, get_args, get_origin

from .errors import ConfigError

T = TypeVar("T")

Check = Callable[[Any], str | None]


def setting(default: Any, help: str, *, check: Check | None = None, secret: bool = False) -> Any:
    """Declare a setting; ``check`` returns an error message or None; ``secret`` hides it in dumps."""
    meta = {"help": help, "check": check, "secret": secret}
    if isinstance(default, list | dict):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def section(cls: type[T], help: str) -> Any:
    return dataclasses.field(default_factory=cls, metadata={"help": help})


def port_check(value: Any) -> str | None:
    return None if 0 <= value <= 65535 else "must be a port number 0-65535 (0 picks a free one)"


def positive(value: Any) -> str | None:
    return None if value > 0 else "must be > 0"


def non_negative(value: Any) -> str | None:
    return None if value >= 0 else "must be >= 0"


def _type_label(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is list:
        return f"list of {_type_label(get_args(tp)[0])}"
    if origin in (typing.Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        return f"{_type_label(args[0])} (optional)"
    return {str: "string", int: "integer", float: "number", bool: "boolean", Path: "path"}.get(tp, str(tp))


def _coerce(tp: Any, value: Any, *, from_env: bool) -> Any:
    origin = get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if value is None or value == "":  # TOML has no null: "" means unset
            return None
        return _coerce(args[0], value, from_env=from_env)
    if origin is list:
        (item,) = get_args(tp)
        if from_env and isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list):
            raise ValueError(f"expected a {_type_label(tp)}")
        return [_coerce(item, v, from_env=from_env) for v in value]
    if tp is bool:
        if from_env and isinstance(value, str):
            low = value.strip().lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
        if not isinstance(value, bool):
            raise ValueError("expected a boolean (true or false)")
        return value
    if tp is int:
        if from_env and isinstance(value, str):
            try:
                return int(value.strip().replace("_", ""))
            except ValueError:
                raise ValueError("expected an integer") from None
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError("expected an integer")
        return value
    if tp is float:
        if from_env and isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                raise ValueError("expected a number") from None
        if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
            raise ValueError("expected a number")  # NaN is no setting's value
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ValueError("expected a string")
        return value
    if tp is Path:
        if not isinstance(value, str) or not value or "\x00" in value:
            raise ValueError("expected a path")
        return Path(value).expanduser()
    raise TypeError(f"unsupported setting type {tp!r}")


def load(cls: type[T], path: Path | None, *, env_prefix: str,
         env: Mapping[str, str] | None = None, overrides: Mapping[str, Any] | None = None) -> T:
    """Read ``path`` (TOML) into ``cls``; apply environment and explicit ``section.key`` overrides."""
    source = str(path) if path is not None else "<defaults>"
    doc: dict[str, Any] = {}
    if path is not None:
        try:
            with open(path, "rb") as fh:
                doc = tomllib.load(fh)
        except FileNotFoundError:
            raise ConfigError(f"{source}: config file not found") from None
        except IsADirectoryError:
            raise ConfigError(f"{source}: is a directory, not a config file") from None
        except OSError as exc:
            raise ConfigError(f"{source}: cannot read config file: {exc.strerror}") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{source}: not valid TOML: {exc}") from None
    return build(cls, doc, source=source, env_prefix=env_prefix,
                 env=os.environ if env is None else env, overrides=overrides or {})


def build(cls: type[T], doc: Mapping[str, Any], *, source: str, env_prefix: str = "",
          env: Mapping[str, str] | None = None, overrides: Mapping[str, Any] | None = None) -> T:
    hints = typing.get_type_hints(cls)
    sections = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    for name in doc:
        if name not in sections:
            raise ConfigError(f"{source}: unknown section [{name}]{_suggest(name, sections)}")
    built: dict[str, Any] = {}
    env = env or {}
    overrides = dict(overrides or {})
    for sname in sections:
        scls = hints[sname]
        table = doc.get(sname, {})
        if not isinstance(table, dict):
            raise ConfigError(f"{source}: [{sname}] must be a table")
        shints = typing.get_type_hints(scls)
        sfields = {f.name: f for f in dataclasses.fields(scls)}
        for key in table:
            if key not in sfields:
                raise ConfigError(f"{source}: unknown setting {sname}.{key}{_suggest(key, sfields)}")
        values: dict[str, Any] = {}
        for key, f in sfields.items():
            dotted = f"{sname}.{key}"
            env_name = f"{env_prefix}{sname}_{key}".upper()
            raw: Any
            if dotted in overrides:
                raw, from_env, where = overrides.pop(dotted), False, f"override {dotted}"
            elif env_prefix and env_name in env:
                raw, from_env, where = env[env_name], True, f"${env_name}"
            elif key in table:
                raw, from_env, where = table[key], False, f"{source}: {dotted}"
            else:
                continue
            try:
                value = _coerce(shints[key], raw, from_env=from_env)
            except ValueError as exc:
                raise ConfigError(f"{where}: {exc}, got {str(raw)[:60]!r}") from None
            check = f.metadata.get("check")
            problem = check(value) if check and value is not None else None
            if problem:
                raise ConfigError(f"{where}: {problem}, got {str(raw)[:60]!r}")
            values[key] = value
        built[sname] = scls(**values)
    if overrides:
        raise ConfigError(f"unknown setting {next(iter(overrides))}")
    return cls(**built)


def _suggest(name: str, choices: Mapping[str, Any]) -> str:
    close = difflib.get_close_matches(name, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if value is None:
        return '""'
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def describe(cls: type[Any]) -> list[tuple[str, str, str, Any, str]]:
    """(section, key, type, default, help) for every setting, in declaration order."""
    rows = []
    hints = typing.get_type_hints(cls)
    for sfield in dataclasses.fields(cls):
        scls = hints[sfield.name]
        shints = typing.get_type_hints(scls)
        for f in dataclasses.fields(scls):
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[operator]
            rows.append((sfield.name, f.name, _type_label(shints[f.name]), default, f.metadata.get("help", "")))
    return rows


def render_template(cls: type[Any], title: str) -> str:
    """A commented TOML file listing every setting at its default."""
    out = [f"# {title}", "# Every setting is shown at its default; uncomment to change.", ""]
    section_help = {f.name: f.metadata.get("help", "") for f in dataclasses.fields(cls)}
    current = None
    for sname, key, label, default, help_text in describe(cls):
        if sname != current:
            out += ["", f"[{sname}]", f"# {section_help[sname]}"] if current else [
                f"[{sname}]", f"# {section_help[sname]}"]
            current = sname
        out.append(f"# {help_text} ({label})")
        out.append(f"# {key} = {_toml_value(default)}")
    return "\n".join(out) + "\n"


def render_markdown(cls: type[Any], title: str, env_prefix: str) -> str:
    out = [f"## {title}", "", "| setting | type | default | environment | meaning |", "|---|---|---|---|---|"]
    for sname, key, label, default, help_text in describe(cls):
        env_name = f"{env_prefix}{sname}_{key}".upper()
        out.append(f"| `{sname}.{key}` | {label} | `{_toml_value(default)}` | `{env_name}` | {help_text} |")
    return "\n".join(out) + "\n"
