"""Logging set-up for the daemons and the CLI: one line per record on stderr (journald adds the time)."""

from __future__ import annotations

import logging
import sys


def setup_logging(verbose: int) -> None:
    level = logging.DEBUG if verbose > 1 else logging.INFO if verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    # Chatty third-party loggers stay at WARNING unless we debug.
    if verbose < 2:
        for name in ("amqtt", "transitions", "aiohttp.access"):
            logging.getLogger(name).setLevel(logging.WARNING)
