"""The operator CLI's client for the control API (``--api`` / ``$NEARCAST_API``, ``$NEARCAST_TOKEN``).

Synchronous on purpose: a CLI command makes a handful of calls and exits.  Every failure becomes a
:class:`ApiError` with a one-line reason the CLI prints as is.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from shared.errors import NearcastError


class ApiError(NearcastError):
    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


class ApiClient:
    def __init__(self, base_url: str, token: str | None, timeout: float = 30.0) -> None:
        if not base_url:
            raise ApiError("no control API given: use --api or set NEARCAST_API")
        parsed = urllib.parse.urlparse(base_url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise ApiError(f"--api must be an http(s) URL, got {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.timeout = timeout

    def request(self, method: str, path: str, body: Any = None, *, raw: bytes | None = None,
                content_type: str = "application/json", text: bool = False) -> Any:
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        req = urllib.request.Request(self.base_url + path, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", content_type)
        if self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                payload = resp.read()
        except urllib.error.HTTPError as exc:
            detail = exc.read()[:2000]
            try:
                message = json.loads(detail).get("error") or exc.reason
            except (ValueError, AttributeError):
                message = exc.reason
            raise ApiError(f"{method} {path}: {exc.code} {message}", exc.code) from None
        except urllib.error.URLError as exc:
            raise ApiError(f"cannot reach the control API at {self.base_url}: {exc.reason}") from None
        except (TimeoutError, OSError) as exc:
            raise ApiError(f"control API at {self.base_url} failed: {exc}") from None
        if text:
            return payload.decode("utf-8", errors="replace")
        if not payload:
            return None
        try:
            return json.loads(payload)
        except ValueError:
            raise ApiError(f"{method} {path}: the API answered with something that is not JSON") from None

    def get(self, path: str) -> Any:
        return self.request("GET", path)

    def post(self, path: str, body: Any = None) -> Any:
        return self.request("POST", path, body if body is not None else {})
