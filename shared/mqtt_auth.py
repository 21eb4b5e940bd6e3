"""Broker credentials and ACLs in Mosquitto's file formats, read by the embedded broker.

The control plane writes a ``passwd`` file (``user:$7$...`` PBKDF2-SHA512 lines, as ``mosquitto_passwd``
writes them) and an ``acl`` file; Mosquitto enforces them in production and the embedded amqtt broker
(:mod:`shared.broker`) enforces the very same files through :class:`BrokerFiles`, so the demo runs with
the rules production runs with.

ACL semantics follow Mosquitto 2: ``topic`` lines belong to the ``user`` section above them (lines
before any ``user`` line are the anonymous client's), ``pattern`` lines apply to every client with
``%u`` (user name) and ``%c`` (client id) substituted; ``read``, ``write``, ``readwrite`` and ``deny``;
a client is allowed only what a rule grants, and a matching ``deny`` wins.  A substituted name holding
``+``, ``#`` or ``/`` never matches (Mosquitto refuses those too).

Versioned user names: an appliance's first broker user is its id; a credential rotation gives it
``<id>@<n>`` (``@`` cannot occur in an id, so such a name never collides with another appliance), and
the ACL carries an explicit ``user`` section for it.  :func:`identity` maps either form to the id.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import os
import re
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from .errors import InvalidInput
from .ids import check_id

log = logging.getLogger(__name__)

ITERATIONS = 101  # what mosquitto_passwd uses; the password is 32 random bytes, not a human secret
SALT_BYTES = 12
ROTATION_SEP = "@"
_GENERATION_RE = re.compile(r"[1-9][0-9]{0,8}")

Access = Literal["read", "write"]


# -- passwords -------------------------------------------------------------------------------------
def new_password() -> str:
    return secrets.token_urlsafe(32)


def hash_password(password: str, *, salt: bytes | None = None, iterations: int = ITERATIONS) -> str:
    salt = secrets.token_bytes(SALT_BYTES) if salt is None else salt
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations)
    return f"$7${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def verify_password(password: str, hashed: str) -> bool:
    parts = hashed.split("$")
    if len(parts) != 5 or parts[1] != "7" or not parts[2].isdigit() or not 1 <= int(parts[2]) <= 10_000_000:
        return False
    try:
        salt, want = base64.b64decode(parts[3], validate=True), base64.b64decode(parts[4], validate=True)
    except ValueError:
        return False
    got = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, int(parts[2]))
    return hmac.compare_digest(got, want)


# -- versioned user names --------------------------------------------------------------------------
def mqtt_username(appliance_id: str, generation: int) -> str:
    """Generation 0 is the appliance id itself; later ones are ``<id>@<generation>``."""
    check_id(appliance_id, "appliance id")
    if generation < 0 or generation > 999_999_999:
        raise InvalidInput("credential generation out of range")
    return appliance_id if generation == 0 else f"{appliance_id}{ROTATION_SEP}{generation}"


def split_username(username: str) -> tuple[str, int]:
    """``(appliance id, generation)`` of a user name :func:`mqtt_username` made; InvalidInput otherwise."""
    base, sep, gen = username.partition(ROTATION_SEP)
    check_id(base, "MQTT user name")
    if not sep:
        return base, 0
    if not _GENERATION_RE.fullmatch(gen):
        raise InvalidInput(f"invalid MQTT user name {username[:80]!r}")
    return base, int(gen)


def check_username(username: object) -> str:
    if not isinstance(username, str):
        raise InvalidInput("MQTT user name must be a string")
    split_username(username)
    return username


def identity(username: str) -> str:
    """The appliance (or daemon) a broker user name stands for: its id, without a rotation suffix."""
    return username.partition(ROTATION_SEP)[0]


# -- password file ---------------------------------------------------------------------------------
def parse_passwd(text: str) -> dict[str, str]:
    """``user -> hash`` from a Mosquitto password file; malformed lines are skipped with a warning."""
    users: dict[str, str] = {}
    for n, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        user, sep, hashed = line.partition(":")
        if not sep or not user or not hashed.startswith("$7$"):
            log.warning("password file line %d is not 'user:$7$...' and is ignored", n)
            continue
        users[user] = hashed
    return users


# -- ACL -------------------------------------------------------------------------------------------
def _split(topic: str) -> tuple[str, ...]:
    return tuple(topic.split("/"))


def topic_matches(rule: tuple[str, ...], topic: tuple[str, ...]) -> bool:
    """MQTT matching of a concrete topic against a filter (``+`` one level, ``#`` the rest, even none)."""
    if topic and topic[0].startswith("$") and rule and rule[0] in ("+", "#"):
        return False  # wildcards never match $-topics
    for i, level in enumerate(rule):
        if level == "#":
            return i == len(rule) - 1
        if i >= len(topic):
            return False
        if level != "+" and level != topic[i]:
            return False
    return len(rule) == len(topic)


def filter_covered(rule: tuple[str, ...], flt: tuple[str, ...]) -> bool:
    """True when every topic the subscription filter ``flt`` can match is matched by ``rule``."""
    if flt and flt[0].startswith("$") != (bool(rule) and rule[0].startswith("$")):
        return False
    for i, level in enumerate(rule):
        if level == "#":
            return i == len(rule) - 1
        if i >= len(flt):
            return False
        if flt[i] == "#":
            return False
        if level == "+":
            continue
        if flt[i] == "+" or flt[i] != level:
            return False
    return len(rule) == len(flt)


def filters_overlap(a: tuple[str, ...], b: tuple[str, ...]) -> bool:
    """True when some topic matches both filters."""
    for i in range(max(len(a), len(b))):
        x = a[i] if i < len(a) else None
        y = b[i] if i < len(b) else None
        if x == "#" or y == "#":
            return True
        if x is None or y is None:
            return False
        if "+" not in (x, y) and x != y:
            return False
    return True


@dataclass(frozen=True)
class AclRule:
    access: Literal["read", "write", "readwrite", "deny"]
    topic: str
    pattern: bool

    def grants(self, access: Access) -> bool:
        return self.access in ("readwrite", access)


def _substitute(rule: AclRule, username: str | None, client_id: str) -> tuple[str, ...] | None:
    if not rule.pattern:
        return _split(rule.topic)
    text = rule.topic
    if "%u" in text:
        if not username or any(c in username for c in "+#/"):
            return None
        text = text.replace("%u", username)
    if "%c" in text:
        if not client_id or any(c in client_id for c in "+#/"):
            return None
        text = text.replace("%c", client_id)
    return _split(text)


@dataclass
class Acl:
    anonymous: list[AclRule] = field(default_factory=list)
    users: dict[str, list[AclRule]] = field(default_factory=dict)
    patterns: list[AclRule] = field(default_factory=list)

    @classmethod
    def parse(cls, text: str) -> Acl:
        """Mosquitto ACL text; a line it cannot read is :class:`InvalidInput` naming the line."""
        acl = cls()
        current = acl.anonymous
        for n, raw in enumerate(text.splitlines(), start=1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            word, _, rest = line.partition(" ")
            rest = rest.strip()
            if word == "user":
                if not rest:
                    raise InvalidInput(f"ACL line {n}: 'user' needs a name")
                current = acl.users.setdefault(rest, [])
                continue
            if word not in ("topic", "pattern"):
                raise InvalidInput(f"ACL line {n}: expected user, topic or pattern, got {word[:40]!r}")
            access, _, topic = rest.partition(" ")
            if access in ("read", "write", "readwrite", "deny"):
                topic = topic.strip()
            else:  # "topic foo/bar" grants readwrite
                access, topic = "readwrite", rest
            if not topic or any(c in topic for c in "\0"):
                raise InvalidInput(f"ACL line {n}: missing topic")
            rule = AclRule(access, topic, word == "pattern")  # type: ignore[arg-type]
            (acl.patterns if word == "pattern" else current).append(rule)
        return acl

    def _rules(self, username: str | None) -> list[AclRule]:
        own = self.users.get(username, []) if username else self.anonymous
        return [*own, *self.patterns] if username else own

    def allows(self, username: str | None, client_id: str, topic: str, access: Access) -> bool:
        """May this client publish (``write``) or receive (``read``) on the concrete ``topic``?"""
        levels = _split(topic)
        granted = False
        for rule in self._rules(username):
            filt = _substitute(rule, username, client_id)
            if filt is None or not topic_matches(filt, levels):
                continue
            if rule.access == "deny":
                return False
            granted = granted or rule.grants(access)
        return granted

    def allows_subscribe(self, username: str | None, client_id: str, topic_filter: str) -> bool:
        """Stricter than Mosquitto (which grants any filter and checks each delivery): the whole filter
        must lie inside one read rule and touch no deny rule, so nothing is ever sent outside the ACL."""
        flt = _split(topic_filter)
        covered = False
        for rule in self._rules(username):
            filt = _substitute(rule, username, client_id)
            if filt is None:
                continue
            if rule.access == "deny":
                if filters_overlap(filt, flt):
                    return False
                continue
            covered = covered or (rule.grants("read") and filter_covered(filt, flt))
        return covered


# -- the two files together, reloaded when they change ---------------------------------------------
def _stamp(path: Path) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)


class BrokerFiles:
    """The password and ACL files as the broker sees them; :meth:`refresh` re-reads them when changed.

    ``refresh`` does file I/O: call it from a worker thread (the embedded broker does).  Lookups
    (:meth:`authenticate`, :meth:`allows`, ...) work on the parsed copy and never touch the disk.  A
    file that is missing or unreadable counts as empty: nobody gets in rather than everybody.
    """

    def __init__(self, password_file: Path, acl_file: Path) -> None:
        self.password_file = password_file
        self.acl_file = acl_file
        self._stamps: tuple[object, object] = (object(), object())
        self.users: dict[str, str] = {}
        self.acl = Acl()
        self.loads = 0

    def refresh(self) -> bool:
        """Re-read both files if either changed since the last read; True when something was reloaded."""
        stamps = (_stamp(self.password_file), _stamp(self.acl_file))
        if stamps == self._stamps:
            return False
        try:
            users = parse_passwd(self.password_file.read_text()) if stamps[0] is not None else {}
        except OSError as exc:
            log.warning("cannot read MQTT password file %s: %s", self.password_file, exc)
            users = {}
        try:
            acl = Acl.parse(self.acl_file.read_text()) if stamps[1] is not None else Acl()
        except (OSError, InvalidInput) as exc:
            log.warning("cannot use MQTT ACL file %s (%s): every topic is refused", self.acl_file, exc)
            acl = Acl()
        if stamps[0] is None:
            log.warning("MQTT password file %s does not exist (yet): every login is refused", self.password_file)
        self.users, self.acl, self._stamps = users, acl, stamps
        self.loads += 1
        log.info("MQTT broker files loaded: %d user(s)", len(users))
        return True

    def authenticate(self, username: str | None, password: str | None) -> bool:
        hashed = self.users.get(username) if username else None
        return hashed is not None and password is not None and verify_password(password, hashed)

    def known(self, username: str | None) -> bool:
        return bool(username) and username in self.users

    def allows(self, username: str | None, client_id: str, topic: str, access: Access) -> bool:
        # A user removed from the password file keeps no rights on a connection it still holds.
        return self.known(username) and self.acl.allows(username, client_id, topic, access)

    def allows_subscribe(self, username: str | None, client_id: str, topic_filter: str) -> bool:
        return self.known(username) and self.acl.allows_subscribe(username, client_id, topic_filter)

