from __future__ import annotations

import os
import stat
from pathlib import Path

from shared.files import write_private


def test_private_from_the_first_byte_and_replaced_atomically(tmp_path: Path) -> None:
    old = os.umask(0o000)  # even a permissive umask must not expose the secret
    try:
        p = tmp_path / "sub" / "key"
        write_private(p, "one")
        assert stat.S_IMODE(p.stat().st_mode) == 0o600 and p.read_text() == "one"
        write_private(p, b"two")
        assert p.read_bytes() == b"two"
        assert [x.name for x in p.parent.iterdir()] == ["key"]  # no temp file left behind
    finally:
        os.umask(old)
