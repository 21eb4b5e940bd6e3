"""The W3C ClearKey license exchange, as a pure function the control plane's endpoint calls.

The endpoint itself (HTTP, play-token check) belongs to the control API; it verifies the token,
loads the title's key with :func:`control.encode.crypto.read_key`, and hands the request body
here.  Request and response follow the EME spec (section 9.1.3/9.1.4)::

    request  {"kids": ["<base64url KID>", ...], "type": "temporary"}
    response {"keys": [{"kty": "oct", "kid": "<base64url KID>", "k": "<base64url key>"}], "type": "temporary"}

Only the key of the title the token was issued for can ever be returned; a request naming any
other KID is refused rather than answered partially, so a token cannot be used to probe KIDs.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from shared.errors import Forbidden, InvalidInput

from .crypto import TitleKey

MAX_REQUEST_BYTES = 4096
MAX_KIDS = 16


class LicenseError(InvalidInput):
    """The license request is malformed."""


class LicenseDenied(Forbidden):
    """The request asks for a key the caller's token does not cover."""


def _b64url_decode(value: object) -> bytes:
    if not isinstance(value, str) or not 1 <= len(value) <= 64:
        raise LicenseError("each kid must be a base64url string")
    try:
        return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    except (binascii.Error, ValueError):
        raise LicenseError("a kid is not valid base64url") from None


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def parse_request(body: bytes) -> list[bytes]:
    """The 16-byte KIDs a ClearKey license request asks for."""
    if len(body) > MAX_REQUEST_BYTES:
        raise LicenseError(f"license request larger than {MAX_REQUEST_BYTES} bytes")
    try:
        raw: Any = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise LicenseError("license request is not JSON") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("kids"), list):
        raise LicenseError('license request must be an object with a "kids" list')
    if raw.get("type", "temporary") != "temporary":
        raise LicenseError("only temporary licenses are issued")
    kids = [_b64url_decode(k) for k in raw["kids"]]
    if not 1 <= len(kids) <= MAX_KIDS:
        raise LicenseError(f"license request must name 1-{MAX_KIDS} kids")
    if any(len(k) != 16 for k in kids):
        raise LicenseError("each kid must be 16 bytes")
    return kids


def license_response(body: bytes, key: TitleKey) -> dict[str, Any]:
    """Answer ``body`` with ``key`` if (and only if) every KID asked for is this title's KID."""
    if key.scheme != "cenc":
        raise LicenseDenied("this title is not CENC-protected")
    kid = bytes.fromhex(key.kid)
    wanted = parse_request(body)
    if any(k != kid for k in wanted):
        raise LicenseDenied("license request names a key outside this title")
    return {"keys": [{"kty": "oct", "kid": _b64url(kid), "k": _b64url(bytes.fromhex(key.key))}], "type": "temporary"}
