"""edge.beneath: opening below the cache's sets/ directory refuses every symlink, with openat2 and without."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from edge.beneath import Opener, SymlinkRefused


@pytest.fixture(params=["openat2", "lstat-chain"])
def opener(request: pytest.FixtureRequest, tmp_path: Path) -> Opener:
    base = tmp_path / "sets"
    (base / "t1" / "v1" / "hls").mkdir(parents=True)
    (base / "t1" / "v1" / "hls" / "seg.m4s").write_bytes(b"segment")
    (tmp_path / "secret").write_bytes(b"secret")
    op = Opener(str(base), use_openat2=request.param == "openat2")
    request.addfinalizer(op.close)
    return op


def _read(fd: int) -> bytes:
    try:
        return os.read(fd, 100)
    finally:
        os.close(fd)


def test_opens_a_regular_file(opener: Opener) -> None:
    assert _read(opener.open("t1/v1/hls/seg.m4s")) == b"segment"


def test_the_kernel_checks_on_this_machine(tmp_path: Path) -> None:
    # Linux >= 5.6: openat2 is used (after a first call, a fallback would have switched it off)
    op = Opener(str(tmp_path))
    (tmp_path / "f").write_bytes(b"x")
    os.close(op.open("f"))
    assert op.kernel_checked
    op.close()


@pytest.mark.parametrize("where", ["file", "dir", "version", "title", "inside"])
def test_every_symlink_is_refused(opener: Opener, tmp_path: Path, where: str) -> None:
    base = tmp_path / "sets"
    if where == "file":
        (base / "t1" / "v1" / "hls" / "evil.m4s").symlink_to(tmp_path / "secret")
        path = "t1/v1/hls/evil.m4s"
    elif where == "dir":
        (base / "t1" / "v1" / "up").symlink_to(tmp_path)
        path = "t1/v1/up/secret"
    elif where == "version":
        (base / "t1" / "v2").symlink_to(tmp_path)
        path = "t1/v2/secret"
    elif where == "title":
        (base / "t2").symlink_to(tmp_path)
        path = "t2/secret"
    else:  # a symlink that stays inside the cache is refused all the same
        (base / "t1" / "v1" / "alias.m4s").symlink_to(base / "t1" / "v1" / "hls" / "seg.m4s")
        path = "t1/v1/alias.m4s"
    with pytest.raises(SymlinkRefused):
        os.close(opener.open(path))


def test_missing_and_not_a_directory(opener: Opener) -> None:
    with pytest.raises(FileNotFoundError):
        opener.open("t1/v1/hls/nope.m4s")
    with pytest.raises(FileNotFoundError):
        opener.open("t9/v1/x")
    with pytest.raises(NotADirectoryError):
        opener.open("t1/v1/hls/seg.m4s/x")


def test_a_fifo_does_not_block(opener: Opener, tmp_path: Path) -> None:
    fifo = tmp_path / "sets" / "t1" / "v1" / "hls" / "pipe.m4s"
    os.mkfifo(fifo)
    fd = opener.open("t1/v1/hls/pipe.m4s")  # O_NONBLOCK: returns at once, no writer needed
    try:
        assert stat.S_ISFIFO(os.fstat(fd).st_mode)  # the caller's S_ISREG check turns it into a miss
    finally:
        os.close(fd)
