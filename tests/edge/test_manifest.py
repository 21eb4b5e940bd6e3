"""File-set manifests: signature first, strict on what matters, lenient on extra fields."""

from __future__ import annotations

import hashlib
import json

import pytest

from edge.manifest import BadManifest, parse_manifest
from shared.errors import SignatureError
from shared.signing import Signer, sign_document

SHA = hashlib.sha256(b"x").hexdigest()


def signed(signer: Signer, files: list[object], **top: object) -> bytes:
    return json.dumps(sign_document(signer, {"title_id": "t1", "version": "v1", "files": files, **top})).encode()


def test_valid_manifest_ignores_unknown_fields() -> None:
    s = Signer.generate()
    data = signed(s, [{"path": "hls/a.m4s", "size": 1, "sha256": SHA, "bitrate": 5}], ladder=[1, 2])
    m = parse_manifest(data, {s.key_id: s.public_raw}, title_id="t1", version="v1")
    assert m.size == 1 and m.files[0].path == "hls/a.m4s"


@pytest.mark.parametrize("files", [
    [{"path": "../a", "size": 1, "sha256": SHA}], [{"path": "/a", "size": 1, "sha256": SHA}],
    [{"path": "a\\b", "size": 1, "sha256": SHA}], [{"path": "a\x00", "size": 1, "sha256": SHA}],
    [{"path": "a//b", "size": 1, "sha256": SHA}], [{"path": "a", "size": -1, "sha256": SHA}],
    [{"path": "a", "size": True, "sha256": SHA}], [{"path": "a", "size": 1, "sha256": SHA.upper()}],
    [{"path": "a", "size": 1}], [], "nope", [{"path": "a", "size": 1, "sha256": SHA}] * 2,
    [{"path": "a", "size": 1, "sha256": SHA}, {"path": "a/b", "size": 1, "sha256": SHA}],
])
def test_bad_entries_are_refused(files: object) -> None:
    s = Signer.generate()
    with pytest.raises(BadManifest):
        parse_manifest(signed(s, files), {s.key_id: s.public_raw}, title_id="t1", version="v1")  # type: ignore[arg-type]


def test_signature_and_identity_are_checked() -> None:
    s, other = Signer.generate(), Signer.generate()
    data = signed(s, [{"path": "a", "size": 1, "sha256": SHA}])
    with pytest.raises(SignatureError):
        parse_manifest(data, {other.key_id: other.public_raw}, title_id="t1", version="v1")
    tampered = json.loads(data)
    tampered["files"][0]["size"] = 2
    with pytest.raises(SignatureError):
        parse_manifest(json.dumps(tampered).encode(), {s.key_id: s.public_raw}, title_id="t1", version="v1")
    with pytest.raises(BadManifest):
        parse_manifest(data, {s.key_id: s.public_raw}, title_id="t2", version="v1")
    for junk in (b"\xff", b"[1]", b"{" * 100_000):
        with pytest.raises(BadManifest):
            parse_manifest(junk, {s.key_id: s.public_raw}, title_id="t1", version="v1")
