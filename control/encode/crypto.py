"""Per-title content keys: generation, the key file the license server reads, AES-128 segments.

Key file format (``keys_dir/<title_id>.json``, mode 0600, never under the origin root)::

    {"version": 1, "title_id": "...", "scheme": "cenc" | "aes128",
     "kid": "<32 hex>", "key": "<32 hex>", "created": "<ISO-8601 UTC>"}

The control plane's license endpoint answers a W3C ClearKey request for ``kid`` (base64url) with
``key``; the HLS key endpoint returns the 16 raw bytes of ``key``.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import struct
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from .errors import BadSpec

#: W3C "common" PSSH system id, the one ClearKey players look for.
COMMON_SYSTEM_ID = uuid.UUID("1077efec-c0b2-4d02-ace3-3c1e52e2fb4b")
#: DASH-IF ClearKey system id for ``ContentProtection``.
CLEARKEY_SYSTEM_ID = uuid.UUID("e2719d58-a985-b3c9-781a-b030af78d30e")


@dataclass(frozen=True)
class TitleKey:
    title_id: str
    scheme: str
    kid: str
    key: str

    @property
    def kid_uuid(self) -> str:
        return str(uuid.UUID(hex=self.kid))

    @property
    def kid_b64url(self) -> str:
        return base64.urlsafe_b64encode(bytes.fromhex(self.kid)).rstrip(b"=").decode()

    def __repr__(self) -> str:  # keep keys out of logs and tracebacks
        return f"TitleKey(title_id={self.title_id!r}, scheme={self.scheme!r}, kid={self.kid!r}, key=<hidden>)"


def new_key(title_id: str, scheme: str) -> TitleKey:
    if scheme not in ("cenc", "aes128"):
        raise BadSpec(f"unknown encryption scheme {scheme!r}")
    return TitleKey(title_id, scheme, secrets.token_hex(16), secrets.token_hex(16))


def key_path(keys_dir: Path, title_id: str) -> Path:
    return keys_dir / f"{title_id}.json"


def write_key(keys_dir: Path, key: TitleKey) -> Path:
    """Write the key file atomically, readable by its owner only from the first byte."""
    keys_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    final = key_path(keys_dir, key.title_id)
    tmp = keys_dir / f".{key.title_id}.{secrets.token_hex(4)}.tmp"
    body = {
        "version": 1,
        "title_id": key.title_id,
        "scheme": key.scheme,
        "kid": key.kid,
        "key": key.key,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(body, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return final


def read_key(keys_dir: Path, title_id: str) -> TitleKey:
    raw = json.loads(key_path(keys_dir, title_id).read_text())
    if raw.get("version") != 1:
        raise BadSpec(f"key file for {title_id!r} has unknown version {raw.get('version')!r}")
    for field in ("kid", "key"):
        value = raw.get(field)
        if not isinstance(value, str) or len(value) != 32 or any(c not in "0123456789abcdef" for c in value):
            raise BadSpec(f"key file for {title_id!r}: {field} must be 32 lowercase hex digits")
    return TitleKey(str(raw["title_id"]), str(raw["scheme"]), raw["kid"], raw["key"])


def aes128_encrypt(data: bytes, key: TitleKey, sequence: int) -> bytes:
    """HLS AES-128: whole-segment AES-CBC with PKCS#7; IV is the media sequence number (RFC 8216)."""
    iv = sequence.to_bytes(16, "big")
    padder = padding.PKCS7(128).padder()
    enc = Cipher(algorithms.AES(bytes.fromhex(key.key)), modes.CBC(iv)).encryptor()
    return enc.update(padder.update(data) + padder.finalize()) + enc.finalize()


def aes128_decrypt(data: bytes, key_bytes: bytes, sequence: int) -> bytes:
    dec = Cipher(algorithms.AES(key_bytes), modes.CBC(sequence.to_bytes(16, "big"))).decryptor()
    unpadder = padding.PKCS7(128).unpadder()
    return unpadder.update(dec.update(data) + dec.finalize()) + unpadder.finalize()


def pssh_box(kid: str) -> bytes:
    """A version-1 PSSH of the W3C common system listing ``kid``: what ClearKey EME initialises from."""
    body = struct.pack(">I", 1 << 24) + COMMON_SYSTEM_ID.bytes + struct.pack(">I", 1) + bytes.fromhex(kid)
    body += struct.pack(">I", 0)
    return struct.pack(">I4s", 8 + len(body), b"pssh") + body
