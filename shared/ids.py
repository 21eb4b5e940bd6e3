"""Identifiers that travel in topics, paths and messages.

They are checked with one rule everywhere so an id can never smuggle an MQTT wildcard, a path
separator or a control character into a topic or a file name.
"""

from __future__ import annotations

import re
import secrets
import time

from .errors import InvalidInput

_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def check_id(value: object, what: str = "id") -> str:
    """Return ``value`` if it is a valid identifier (1-64 of ``[A-Za-z0-9._-]``, not starting with a dot)."""
    if not isinstance(value, str) or not _ID_RE.fullmatch(value) or ".." in value:
        raise InvalidInput(f"invalid {what} {str(value)[:80]!r}: use 1-64 letters, digits, '.', '_' or '-'")
    return value


def is_valid_id(value: object) -> bool:
    return isinstance(value, str) and bool(_ID_RE.fullmatch(value)) and ".." not in value


def new_id() -> str:
    """A unique, roughly time-sortable id: 12 hex digits of milliseconds + 12 random hex digits."""
    return f"{int(time.time() * 1000):012x}{secrets.token_hex(6)}"
