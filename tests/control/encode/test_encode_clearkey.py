"""ClearKey license exchange (pure): answers its own title's KID, refuses everything else."""

from __future__ import annotations

import base64
import json

import pytest

from control.encode.clearkey import LicenseDenied, LicenseError, license_response, parse_request
from control.encode.crypto import TitleKey, new_key


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def test_encode_clearkey_answers_with_the_title_key() -> None:
    key = new_key("t1", "cenc")
    body = json.dumps({"kids": [key.kid_b64url], "type": "temporary"}).encode()
    answer = license_response(body, key)
    (entry,) = answer["keys"]
    assert entry["kty"] == "oct" and entry["kid"] == key.kid_b64url
    assert base64.urlsafe_b64decode(entry["k"] + "==").hex() == key.key


def test_encode_clearkey_refuses_other_kids() -> None:
    key, other = new_key("t1", "cenc"), new_key("t2", "cenc")
    for kids in ([other.kid_b64url], [key.kid_b64url, other.kid_b64url]):
        with pytest.raises(LicenseDenied):
            license_response(json.dumps({"kids": kids}).encode(), key)
    with pytest.raises(LicenseDenied):
        license_response(json.dumps({"kids": [key.kid_b64url]}).encode(), TitleKey("t1", "aes128", key.kid, key.key))


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"not json",
        b"\xff\xfe",
        b"[]",
        b'{"kids": "abc"}',
        b'{"kids": []}',
        b'{"kids": [1]}',
        b'{"kids": ["%%%"]}',
        json.dumps({"kids": [_b64(b"short")]}).encode(),
        json.dumps({"kids": [_b64(bytes(16))] * 17}).encode(),
        json.dumps({"kids": [_b64(bytes(16))], "type": "persistent-license"}).encode(),
        b'{"kids": ["' + b"A" * 5000 + b'"]}',
    ],
)
def test_encode_clearkey_rejects_malformed_requests(body: bytes) -> None:
    with pytest.raises(LicenseError) as info:
        parse_request(body)
    assert "\n" not in str(info.value) and info.value.http_status == 400
