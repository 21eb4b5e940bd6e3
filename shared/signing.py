"""Ed25519 signatures for artifacts: model bundles and file-set manifests.

The control plane holds the private key; appliances hold the public keys by key id (the first 16 hex
digits of the SHA-256 of the raw public key), so the control plane can rotate keys while old
artifacts still verify.  A manifest's signature covers its canonical JSON (sorted keys, compact, UTF-8)
without the ``signature`` field itself.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from .errors import ConfigError, SignatureError
from .files import write_private


def key_id_of(public_raw: bytes) -> str:
    return hashlib.sha256(public_raw).hexdigest()[:16]


class Signer:
    """A private Ed25519 key with its id."""

    def __init__(self, private: Ed25519PrivateKey) -> None:
        self._private = private
        self.public_raw = private.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        self.key_id = key_id_of(self.public_raw)

    @classmethod
    def generate(cls) -> Signer:
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def load(cls, path: Path) -> Signer:
        try:
            data = path.read_bytes()
            key = serialization.load_pem_private_key(data, password=None)
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read signing key: {exc.strerror}") from None
        except (ValueError, TypeError):
            raise ConfigError(f"{path}: not a PEM private key") from None
        if not isinstance(key, Ed25519PrivateKey):
            raise ConfigError(f"{path}: signing key must be Ed25519")
        return cls(key)

    @classmethod
    def load_or_create(cls, path: Path) -> Signer:
        if path.exists():
            return cls.load(path)
        signer = cls.generate()
        signer.save(path)
        return signer

    def save(self, path: Path) -> None:
        write_private(path, self._private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))

    def sign(self, data: bytes) -> bytes:
        return self._private.sign(data)

    def public_key_b64(self) -> str:
        return base64.b64encode(self.public_raw).decode()


def parse_public_keys(encoded: Mapping[str, str]) -> dict[str, bytes]:
    """``{key_id: base64 raw key}`` → raw keys, checking each id matches its key."""
    out: dict[str, bytes] = {}
    for kid, b64 in encoded.items():
        try:
            raw = base64.b64decode(b64, validate=True)
        except (binascii.Error, ValueError):
            raise ConfigError(f"public key {kid!r} is not base64") from None
        if len(raw) != 32 or key_id_of(raw) != kid:
            raise ConfigError(f"public key {kid!r} does not match its id")
        out[kid] = raw
    return out


def verify(public_keys: Mapping[str, bytes], key_id: str, data: bytes, signature: bytes) -> None:
    """Raise :class:`SignatureError` unless ``signature`` over ``data`` verifies with ``key_id``."""
    raw = public_keys.get(key_id)
    if raw is None:
        raise SignatureError(f"unknown signing key {key_id[:32]!r}")
    try:
        Ed25519PublicKey.from_public_bytes(raw).verify(signature, data)
    except (InvalidSignature, ValueError):
        raise SignatureError("signature does not verify") from None


def canonical_json(doc: Mapping[str, Any]) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False).encode()


def sign_document(signer: Signer, doc: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``doc`` with a ``signature`` field over its canonical form."""
    body = {k: v for k, v in doc.items() if k != "signature"}
    sig = signer.sign(canonical_json(body))
    return {**body, "signature": {"alg": "ed25519", "key_id": signer.key_id,
                                  "value": base64.b64encode(sig).decode()}}


def verify_document(public_keys: Mapping[str, bytes], doc: Mapping[str, Any]) -> dict[str, Any]:
    """Check a signed document; returns it without its signature field."""
    sig = doc.get("signature")
    if not isinstance(sig, dict) or sig.get("alg") != "ed25519":
        raise SignatureError("document is not signed with ed25519")
    kid, value = sig.get("key_id"), sig.get("value")
    if not isinstance(kid, str) or not isinstance(value, str):
        raise SignatureError("malformed signature field")
    try:
        raw_sig = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise SignatureError("signature is not base64") from None
    body = {k: v for k, v in doc.items() if k != "signature"}
    try:
        data = canonical_json(body)
    except ValueError:
        raise SignatureError("document is not canonical JSON") from None
    verify(public_keys, kid, data, raw_sig)
    return body
