from __future__ import annotations

from pathlib import Path

import pytest

from shared import signing
from shared.errors import ConfigError, SignatureError


def test_sign_and_verify_bytes_and_rotation(tmp_path: Path) -> None:
    s1, s2 = signing.Signer.generate(), signing.Signer.generate()
    keys = signing.parse_public_keys({s1.key_id: s1.public_key_b64(), s2.key_id: s2.public_key_b64()})
    sig = s1.sign(b"bundle")
    signing.verify(keys, s1.key_id, b"bundle", sig)
    with pytest.raises(SignatureError):
        signing.verify(keys, s1.key_id, b"bundle!", sig)
    with pytest.raises(SignatureError):
        signing.verify(keys, s2.key_id, b"bundle", sig)
    with pytest.raises(SignatureError, match="unknown signing key"):
        signing.verify({}, s1.key_id, b"bundle", sig)
    flipped = bytes([sig[0] ^ 1]) + sig[1:]
    with pytest.raises(SignatureError):
        signing.verify(keys, s1.key_id, b"bundle", flipped)
    with pytest.raises(SignatureError):
        signing.verify(keys, s1.key_id, b"bundle", b"short")


def test_key_file_is_private_and_reloads(tmp_path: Path) -> None:
    path = tmp_path / "sign.pem"
    s = signing.Signer.load_or_create(path)
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    again = signing.Signer.load_or_create(path)
    assert again.key_id == s.key_id
    path.write_text("garbage")
    with pytest.raises(ConfigError, match="not a PEM"):
        signing.Signer.load(path)


def test_documents_are_signed_over_canonical_json() -> None:
    s = signing.Signer.generate()
    keys = {s.key_id: s.public_raw}
    doc = {"title_id": "t1", "files": [{"path": "a.m4s", "size": 3, "sha256": "00"}]}
    signed = signing.sign_document(s, doc)
    assert signing.verify_document(keys, dict(reversed(list(signed.items())))) == doc
    tampered = {**signed, "files": [{"path": "a.m4s", "size": 4, "sha256": "00"}]}
    with pytest.raises(SignatureError):
        signing.verify_document(keys, tampered)
    for bad_sig in (None, "x", {"alg": "rsa"}, {"alg": "ed25519", "key_id": s.key_id, "value": "!!"},
                    {"alg": "ed25519", "key_id": 1, "value": "AA=="}):
        with pytest.raises(SignatureError):
            signing.verify_document(keys, {**doc, "signature": bad_sig})


def test_public_key_ids_must_match() -> None:
    s = signing.Signer.generate()
    with pytest.raises(ConfigError):
        signing.parse_public_keys({"0000000000000000": s.public_key_b64()})
    with pytest.raises(ConfigError):
        signing.parse_public_keys({s.key_id: "not base64!"})
