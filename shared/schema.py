"""Strict decoding of JSON-like data into typed, frozen dataclasses.

Everything that crosses a process boundary (MQTT bodies, config files, API bodies) is decoded here
rather than trusted: unknown keys, missing keys and wrong types are errors that name the path of the
offending value (``body.files[3].size``).  Supported field types: ``str``, ``int``, ``float``,
``bool``, ``None`` unions, ``list[T]``, ``tuple[T, ...]``, ``dict[str, T]``, ``Literal[...]``,
``Any`` (JSON as is) and nested dataclasses.  ``bool`` is never accepted for ``int``/``float``.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Callable, Mapping
from functools import cache
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

from .errors import InvalidInput

T = TypeVar("T")

_MAX_DEPTH = 32


class SchemaError(InvalidInput):
    """Data does not match the expected shape; ``path`` locates the offending value."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}" if path else message)
        self.path = path
        self.reason = message


@cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def decode(cls: type[T], data: Any, path: str = "") -> T:
    """Build ``cls`` (a dataclass) from ``data``, strictly.

    A decoder compiled once per type does the work (telemetry decodes thousands of these a second);
    when it finds a problem, the slower reference walk below runs again to name the offending path.
    """
    try:
        return typing.cast(T, _compiled(typing.cast(Any, cls))(data))
    except (_Invalid, RecursionError):
        pass
    _decode(cls, data, path, 0)  # raises SchemaError with the path
    raise SchemaError(path, "invalid value")  # pragma: no cover - the walk always raises first


class _Invalid(Exception):
    """Raised by compiled decoders; carries no detail (the reference walk produces it)."""


_INVALID = _Invalid()
Decoder = Callable[[Any], Any]


def _identity(value: Any) -> Any:
    return value


@cache
def _compiled(tp: Any) -> Decoder:
    if tp is Any:
        return _identity
    origin = get_origin(tp)
    if origin is Union or origin is types.UnionType:
        args = get_args(tp)
        optional = type(None) in args
        inner = [_compiled(a) for a in args if a is not type(None)]
        if len(inner) == 1:
            only = inner[0]

            def opt(value: Any) -> Any:
                return None if value is None else only(value)

            return opt if optional else only

        def union(value: Any) -> Any:
            if value is None and optional:
                return None
            for dec in inner:
                try:
                    return dec(value)
                except _Invalid:
                    continue
            raise _INVALID

        return union
    if origin is Literal:
        allowed = get_args(tp)
        has_bool = any(isinstance(a, bool) for a in allowed)

        def literal(value: Any) -> Any:
            if value not in allowed or isinstance(value, bool) != has_bool:
                raise _INVALID
            return value

        return literal
    if origin in (list, tuple):
        item = _compiled((get_args(tp)[:1] or (Any,))[0])
        as_tuple = origin is tuple

        def sequence(value: Any) -> Any:
            if not isinstance(value, list | tuple):
                raise _INVALID
            items = [item(v) for v in value]
            return tuple(items) if as_tuple else items

        return sequence
    if origin is dict:
        val = _compiled(get_args(tp)[1])

        def mapping(value: Any) -> Any:
            if not isinstance(value, dict):
                raise _INVALID
            out = {}
            for k, v in value.items():
                if not isinstance(k, str):
                    raise _INVALID
                out[k] = val(v)
            return out

        return mapping
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return _compiled_dataclass(tp)
    if tp is bool:
        def boolean(value: Any) -> Any:
            if not isinstance(value, bool):
                raise _INVALID
            return value

        return boolean
    if tp is int:
        def integer(value: Any) -> Any:
            if isinstance(value, bool) or not isinstance(value, int):
                raise _INVALID
            return value

        return integer
    if tp is float:
        def number(value: Any) -> Any:
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise _INVALID
            return float(value)

        return number
    if tp is str:
        def string(value: Any) -> Any:
            if not isinstance(value, str):
                raise _INVALID
            return value

        return string
    if tp is type(None):
        def null(value: Any) -> Any:
            if value is not None:
                raise _INVALID
            return None

        return null
    raise TypeError(f"schema: unsupported field type {tp!r}")


def _compiled_dataclass(cls: type) -> Decoder:
    hints = _hints(cls)
    fields = [f for f in dataclasses.fields(cls) if f.init]
    names = frozenset(f.name for f in fields)
    required = frozenset(f.name for f in fields
                         if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING)
    decoders: list[tuple[str, Decoder | None]] = [(f.name, None) for f in fields]
    resolved: list[tuple[str, Decoder]] = []

    def dataclass_decoder(value: Any) -> Any:
        if not resolved:  # fields are compiled on first use: types may refer to each other
            resolved.extend((name, _compiled(hints[name])) for name, _ in decoders)
        if not isinstance(value, Mapping) or not names.issuperset(value.keys()) or not required <= value.keys():
            raise _INVALID
        kwargs = {name: dec(value[name]) for name, dec in resolved if name in value}
        try:
            return cls(**kwargs)
        except (ValueError, TypeError, InvalidInput):
            raise _INVALID from None

    return dataclass_decoder


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    return {bool: "boolean", int: "integer", float: "number", str: "string", list: "array",
            dict: "object"}.get(type(value), type(value).__name__)


def _decode(tp: Any, value: Any, path: str, depth: int) -> Any:
    if depth > _MAX_DEPTH:
        raise SchemaError(path, "nested too deeply")
    if tp is Any:
        return value
    origin = get_origin(tp)
    if origin is Union or origin is types.UnionType:
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _decode(arg, value, path, depth + 1)
            except SchemaError as exc:
                errors.append(exc.reason)
        raise SchemaError(path, errors[0] if len(errors) == 1 else f"got {_type_name(value)}, "
                          f"expected one of {', '.join(_describe(a) for a in args)}")
    if origin is Literal:
        allowed = get_args(tp)
        if value not in allowed or isinstance(value, bool) != any(isinstance(a, bool) for a in allowed):
            raise SchemaError(path, f"must be one of {', '.join(repr(a) for a in allowed)}, got {value!r:.60}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, list | tuple):
            raise SchemaError(path, f"expected array, got {_type_name(value)}")
        (item,) = get_args(tp)[:1] or (Any,)
        items = [_decode(item, v, f"{path}[{i}]", depth + 1) for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise SchemaError(path, f"expected object, got {_type_name(value)}")
        _, val_tp = get_args(tp)
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise SchemaError(path, "object keys must be strings")
            out[k] = _decode(val_tp, v, f"{path}.{k}" if path else k, depth + 1)
        return out
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return _decode_dataclass(tp, value, path, depth)
    if tp is bool:
        if not isinstance(value, bool):
            raise SchemaError(path, f"expected boolean, got {_type_name(value)}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise SchemaError(path, f"expected integer, got {_type_name(value)}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise SchemaError(path, f"expected number, got {_type_name(value)}")
        if not math.isfinite(value):
            raise SchemaError(path, "expected a finite number")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise SchemaError(path, f"expected string, got {_type_name(value)}")
        return value
    if tp is type(None):
        if value is not None:
            raise SchemaError(path, f"expected null, got {_type_name(value)}")
        return None
    raise TypeError(f"schema: unsupported field type {tp!r} at {path or '<root>'}")


def _describe(tp: Any) -> str:
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def _decode_dataclass(cls: type, value: Any, path: str, depth: int) -> Any:
    if not isinstance(value, Mapping):
        raise SchemaError(path, f"expected object, got {_type_name(value)}")
    hints = _hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = [k for k in value if k not in fields]
    if unknown:
        key = unknown[0]
        raise SchemaError(f"{path}.{key}" if path else str(key), "unknown field")
    kwargs = {}
    for name, f in fields.items():
        sub = f"{path}.{name}" if path else name
        if name in value:
            kwargs[name] = _decode(hints[name], value[name], sub, depth + 1)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise SchemaError(sub, "missing required field")
    try:
        return cls(**kwargs)
    except SchemaError:
        raise
    except (ValueError, TypeError, InvalidInput) as exc:  # __post_init__ validation
        raise SchemaError(path, str(exc)) from None


def encode(obj: Any) -> Any:
    """The JSON-able form of a dataclass tree (tuples become lists)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: encode(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, list | tuple):
        return [encode(v) for v in obj]
    if isinstance(obj, dict):
        return {str(k): encode(v) for k, v in obj.items()}
    return obj
