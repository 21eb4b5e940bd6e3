"""Mosquitto's password and ACL files, generated from the registry, and telling the broker to re-read them.

The password file uses the PBKDF2-SHA512 ``$7$`` form that ``mosquitto_passwd`` writes for
Mosquitto 2 (``user:$7$<iterations>$<b64 salt>$<b64 hash>``), so the store keeps exactly the line the
broker needs and never the password.  The ACL confines each appliance to its own topics with ``%u``
patterns (see :func:`shared.topics.acl_rules`); an appliance whose credentials were rotated logs in as
``<id>@<n>`` and gets an explicit ``user`` section naming its own topics.  Mosquitto reads both files
at start and on SIGHUP (``broker.reload``); the embedded broker watches them itself.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shlex
import signal
from collections.abc import Iterable, Mapping
from pathlib import Path

from shared import topics
from shared.errors import ConfigError, InvalidInput
from shared.files import write_atomic
from shared.mqtt_auth import (
    ITERATIONS,
    SALT_BYTES,
    check_username,
    hash_password,
    identity,
    new_password,
    verify_password,
)

__all__ = ["ITERATIONS", "SALT_BYTES", "acl_file", "appliance_section", "check_reload", "hash_password",
           "mosquitto_conf", "new_password", "password_file", "reload_broker", "verify_password",
           "write_broker_files"]

log = logging.getLogger(__name__)

RELOAD_TIMEOUT_S = 30.0


def password_file(entries: Mapping[str, str]) -> str:
    """``user:hash`` lines, sorted; a user name that could break the file format is refused."""
    lines = []
    for user, hashed in sorted(entries.items()):
        try:
            check_username(user)
        except InvalidInput:
            raise InvalidInput(f"invalid MQTT user name {str(user)[:80]!r}") from None
        if not hashed.startswith("$7$") or any(c in hashed for c in ":\n\r"):
            raise InvalidInput(f"MQTT password hash for {user!r} is not in mosquitto's $7$ form")
        lines.append(f"{user}:{hashed}")
    return "\n".join(lines) + ("\n" if lines else "")


def appliance_section(username: str) -> str:
    """An explicit ACL ``user`` section for a rotated user name: its appliance's topics, nothing else."""
    aid = identity(check_username(username))
    return "\n".join([
        f"user {username}",
        f"topic write {topics.appliance_status(aid)}",
        f"topic write {topics.appliance_telemetry(aid)}",
        f"topic write {topics.appliance_acks(aid)}",
        f"topic read {topics.appliance_commands(aid)}",
        f"topic read {topics.ROOT}/appliances/{aid}/desired/+",
        f"topic read {topics.control_status()}",
        "",
    ])


def acl_file(control_username: str, users: Iterable[str] = ()) -> str:
    """The ``%u`` patterns for every appliance, plus a section for each rotated (``<id>@<n>``) user."""
    rotated = sorted(u for u in users if u != identity(u))
    return topics.acl_rules(control_username) + "".join("\n" + appliance_section(u) for u in rotated)


def write_broker_files(directory: Path, entries: Mapping[str, str], control_username: str) -> tuple[Path, Path]:
    """Write ``passwd`` and ``acl`` into ``directory``; returns their paths."""
    passwd, acl = directory / "passwd", directory / "acl"
    # World-readable on purpose: mosquitto drops to its own user and must read them.  The password
    # file holds only salted hashes of random passwords.
    write_atomic(passwd, password_file(entries), mode=0o644)
    write_atomic(acl, acl_file(control_username, entries), mode=0o644)
    return passwd, acl


# -- telling the broker ---------------------------------------------------------------------------
def check_reload(spec: str) -> str | None:
    """Config check for ``broker.reload``: empty, ``pid:<file>`` or ``command:<argv>``."""
    if not spec:
        return None
    kind, sep, arg = spec.partition(":")
    if not sep or kind not in ("pid", "command") or not arg.strip():
        return "must be empty, 'pid:<pid file>' or 'command:<command line>'"
    if kind == "command":
        try:
            if not shlex.split(arg):
                return "command: needs a command line"
        except ValueError as exc:
            return f"command line does not parse: {exc}"
    return None


def _signal_pid_file(path: Path) -> int:
    try:
        text = path.read_text().strip()
    except OSError as exc:
        raise ConfigError(f"broker.reload pid file {path}: {exc.strerror}") from None
    if not text.isdigit() or int(text) <= 1:
        raise ConfigError(f"broker.reload pid file {path} does not hold a process id")
    pid = int(text)
    try:
        os.kill(pid, signal.SIGHUP)
    except ProcessLookupError:
        raise ConfigError(f"broker.reload: no process {pid} (from {path})") from None
    except PermissionError:
        raise ConfigError(f"broker.reload: not allowed to signal process {pid} (from {path}); run the broker "
                          "as the same user or use 'command:' with a permitted reload command") from None
    return pid


async def reload_broker(spec: str) -> None:
    """Make the broker re-read its files as ``spec`` says; :class:`ConfigError` says why it could not."""
    if not spec:
        return
    kind, _, arg = spec.partition(":")
    if kind == "pid":
        pid = await asyncio.to_thread(_signal_pid_file, Path(arg.strip()))
        log.info("sent SIGHUP to the MQTT broker (pid %d) to reload its password and ACL files", pid)
        return
    argv = shlex.split(arg)
    try:
        proc = await asyncio.create_subprocess_exec(*argv, stdin=asyncio.subprocess.DEVNULL,
                                                    stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    except OSError as exc:
        raise ConfigError(f"broker.reload command {argv[0]!r}: {exc.strerror}") from None
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), RELOAD_TIMEOUT_S)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise ConfigError(f"broker.reload command {argv[0]!r} did not finish in {RELOAD_TIMEOUT_S:.0f}s") from None
    if proc.returncode != 0:
        raise ConfigError(f"broker.reload command {argv[0]!r} failed with status {proc.returncode}: "
                          f"{out.decode(errors='replace').strip()[-300:]}")
    log.info("reloaded the MQTT broker's password and ACL files with %s", argv[0])


# -- a mosquitto.conf for production ----------------------------------------------------------------
def mosquitto_conf(*, passwd: Path, acl: Path, port: int = 1883, bind: str = "", tls_port: int = 0,
                   cafile: Path | None = None, certfile: Path | None = None, keyfile: Path | None = None,
                   tls_only: bool = False, pid_file: Path | None = None) -> str:
    """A mosquitto.conf (2.x) for nearcast: no anonymous clients, our passwd and ACL, optionally TLS.

    ``tls_only`` leaves out the plain-text listener.  TLS needs ``certfile`` and ``keyfile``; ``cafile``
    is what the broker offers clients as its chain (clients verify the broker with their own CA file).
    """
    if (tls_port or tls_only) and not (certfile and keyfile):
        raise InvalidInput("a TLS listener needs a certificate and its key (--certfile, --keyfile)")
    if tls_only and not tls_port:
        raise InvalidInput("TLS only needs a TLS port")
    if tls_port and tls_port == port and not tls_only:
        raise InvalidInput("the TLS port must differ from the plain port")
    for what, value in (("bind address", bind),):
        if any(c.isspace() for c in value):
            raise InvalidInput(f"{what} must not contain spaces")
    for path in (passwd, acl, cafile, certfile, keyfile, pid_file):
        if path is not None and any(c in str(path) for c in "\n\r"):
            raise InvalidInput("paths must be on one line")
    host = f" {bind}" if bind else ""
    lines = [
        "# Generated by `nearcast control mosquitto-config`: every client authenticates and is confined",
        "# by the ACL the control plane writes; send SIGHUP (or set broker.reload) after they change.",
        "per_listener_settings false",
        "allow_anonymous false",
        f"password_file {passwd}",
        f"acl_file {acl}",
        "persistence true",
    ]
    if pid_file is not None:
        lines.append(f"pid_file {pid_file}")
    if not tls_only:
        lines += ["", f"listener {port}{host}"]
    if tls_port:
        lines += ["", f"listener {tls_port}{host}", f"certfile {certfile}", f"keyfile {keyfile}",
                  "tls_version tlsv1.2"]
        if cafile is not None:
            lines.append(f"cafile {cafile}")
        lines.append("require_certificate false")
    return "\n".join(lines) + "\n"

