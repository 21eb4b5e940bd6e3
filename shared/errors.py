"""The domain exceptions shared by both daemons.

Errors are raised as these types inside the system and translated only at the edges: one HTTP
middleware turns them into JSON error bodies, the CLI into ``click.ClickException`` (one line), the
MQTT loop into a logged rejection plus a rejected ack.
"""

from __future__ import annotations


class NearcastError(Exception):
    """Base of every error nearcast raises on purpose; ``str()`` is a one-line reason."""

    #: HTTP status the API edge maps this error to.
    http_status = 500


class InvalidInput(NearcastError):
    """Input from outside (a request, a file, a message) is malformed or out of bounds."""

    http_status = 400


class NotFound(NearcastError):
    http_status = 404


class Conflict(NearcastError):
    http_status = 409


class Unauthorized(NearcastError):
    http_status = 401


class Forbidden(NearcastError):
    http_status = 403


class ConfigError(InvalidInput):
    """A configuration file or override is wrong; the message names the file and the key."""


class EnvelopeError(InvalidInput):
    """An MQTT payload is not a valid nearcast envelope."""


class TokenError(Forbidden):
    """A URL token is malformed, forged, expired or used outside its scope."""


class SignatureError(InvalidInput):
    """An artifact signature does not verify."""
