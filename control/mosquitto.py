"""Mosquitto's password and ACL files, generated from the registry.

The password file uses the PBKDF2-SHA512 ``$7$`` form that ``mosquitto_passwd`` writes for
Mosquitto 2 (``user:$7$<iterations>$<b64 salt>$<b64 hash>``), so the store keeps exactly the line the
broker needs and never the password.  The ACL confines each appliance to its own topics with ``%u``
patterns (see :func:`shared.topics.acl_rules`); Mosquitto reads both files at start and on SIGHUP.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from collections.abc import Mapping
from pathlib import Path

from shared import topics
from shared.errors import InvalidInput
from shared.files import write_atomic
from shared.ids import check_id

ITERATIONS = 101  # what mosquitto_passwd uses; the password is 32 random bytes, not a human secret
SALT_BYTES = 12


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


def password_file(entries: Mapping[str, str]) -> str:
    """``user:hash`` lines, sorted; a user name that could break the file format is refused."""
    lines = []
    for user, hashed in sorted(entries.items()):
        check_id(user, "MQTT user name")
        if not hashed.startswith("$7$") or any(c in hashed for c in ":\n\r"):
            raise InvalidInput(f"MQTT password hash for {user!r} is not in mosquitto's $7$ form")
        lines.append(f"{user}:{hashed}")
    return "\n".join(lines) + ("\n" if lines else "")


def acl_file(control_username: str) -> str:
    return topics.acl_rules(control_username)


def write_broker_files(directory: Path, entries: Mapping[str, str], control_username: str) -> tuple[Path, Path]:
    """Write ``passwd`` and ``acl`` into ``directory``; returns their paths."""
    passwd, acl = directory / "passwd", directory / "acl"
    # World-readable on purpose: mosquitto drops to its own user and must read them.  The password
    # file holds only salted hashes of random passwords.
    write_atomic(passwd, password_file(entries), mode=0o644)
    write_atomic(acl, acl_file(control_username), mode=0o644)
    return passwd, acl
