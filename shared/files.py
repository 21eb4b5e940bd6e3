"""Replacing files on disk: complete or absent (temp file + fsync + rename + directory fsync), private
from the first byte.

Every write gets its own temporary name (``mkstemp``), so two threads or tasks replacing the same file
at once cannot trip over each other's temporary file: the last rename wins and both succeed.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write_atomic(path: Path, data: bytes | str, *, mode: int = 0o644) -> None:
    """Replace ``path`` atomically with ``data``; the file has ``mode`` from its first byte."""
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = data.encode() if isinstance(data, str) else data
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    tmp = Path(name)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(raw)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)  # the rename itself survives a power cut
    finally:
        os.close(dfd)


def write_private(path: Path, data: bytes | str) -> None:
    """Replace ``path`` atomically with ``data``, readable by its owner only (0600) at every moment.

    Creating the file with mode 0600 matters: writing first and chmod-ing after leaves a window in
    which a key file is readable under the usual umask (``mkstemp`` creates it 0600 already).
    """
    write_atomic(path, data, mode=0o600)
