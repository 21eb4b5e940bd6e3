"""Open a cached file below the cache's ``sets/`` directory, never through a symlink, in one syscall.

Linux's ``openat2(2)`` (5.6+) resolves a path relative to a directory descriptor with
``RESOLVE_BENEATH`` (no component may leave that directory: no ``..`` above it, no absolute path) and
``RESOLVE_NO_SYMLINKS`` (a symlink anywhere in the path fails with ``ELOOP``).  That is the edge's
rule for serving, checked by the kernel atomically with the open: no window between a check and the
open in which a component could be swapped for a symlink, and one path walk of the components below
``sets/`` instead of one ``lstat`` per component, each walking the whole path from ``/``
(``bench/serve.py``: that chain was the largest single cost of a segment request after the copy).

Where ``openat2`` is missing (an older kernel, a seccomp filter answering ``ENOSYS`` or ``EPERM``) the
same rule is applied the old way: ``lstat`` every component, refuse a symlink, then ``open`` with
``O_NOFOLLOW``.  Python has no binding for ``openat2``; it is called through ``ctypes``' ``syscall``
(the call number is 437 on every architecture, from the generic syscall table).
"""

from __future__ import annotations

import ctypes
import errno
import os
import stat

SYS_OPENAT2 = 437
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_BENEATH = 0x08
#: O_NONBLOCK so that a FIFO planted in the cache cannot stall the event loop in open(2).
OPEN_FLAGS = os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK


class SymlinkRefused(Exception):
    """A component below the cache's sets/ directory is a symlink (or would leave it): never followed."""


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


class Opener:
    """Opens relative paths below ``base`` (a directory that exists); one per serving process."""

    def __init__(self, base: str, *, use_openat2: bool = True) -> None:
        self.base = base
        self.dir_fd = os.open(base, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        self._how = _OpenHow(OPEN_FLAGS, 0, RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS)
        self._how_ptr = ctypes.addressof(self._how)
        self._how_size = ctypes.sizeof(self._how)
        self._syscall = None
        if use_openat2:
            try:
                libc = ctypes.CDLL(None, use_errno=True)
                fn = libc.syscall
                fn.restype = ctypes.c_long
                fn.argtypes = [ctypes.c_long, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p, ctypes.c_size_t]
                self._syscall = fn
            except (OSError, AttributeError):
                self._syscall = None

    @property
    def kernel_checked(self) -> bool:
        """True while ``openat2`` does the check (False after a fallback)."""
        return self._syscall is not None

    def open(self, relpath: str) -> int:
        """A descriptor for ``relpath`` (``a/b/c``, already free of ``.``, ``..`` and empty components).

        Raises :class:`SymlinkRefused`, ``FileNotFoundError``/``NotADirectoryError`` (not held), or
        another ``OSError`` (the disk).  The caller owns the descriptor.
        """
        fn = self._syscall
        if fn is not None:
            fd = fn(SYS_OPENAT2, self.dir_fd, relpath.encode(), self._how_ptr, self._how_size)
            if fd >= 0:
                return int(fd)
            err = ctypes.get_errno()
            if err in (errno.ELOOP, errno.EXDEV):
                raise SymlinkRefused(relpath)
            if err not in (errno.ENOSYS, errno.EPERM, errno.E2BIG):
                raise OSError(err, os.strerror(err), relpath)
            self._syscall = None  # this kernel (or its seccomp filter) has no openat2: the portable way
        return self._open_checked(relpath)

    def _open_checked(self, relpath: str) -> int:
        path = self.base
        for part in relpath.split("/"):
            path = f"{path}/{part}"
            if stat.S_ISLNK(os.lstat(path).st_mode):
                raise SymlinkRefused(relpath)
        try:
            return os.open(path, OPEN_FLAGS)
        except OSError as exc:
            if exc.errno == errno.ELOOP:  # swapped for a symlink since the check
                raise SymlinkRefused(relpath) from None
            raise

    def close(self) -> None:
        if self.dir_fd >= 0:
            os.close(self.dir_fd)
            self.dir_fd = -1
