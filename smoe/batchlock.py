"""Exclusive use of a ``fit-batch`` output folder: ``OUTDIR/.smoe-batch.lock``.

:class:`BatchError`, the batch's error, lives here so that the lock can raise
it without importing :mod:`smoe.batch`.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import socket
import warnings
from pathlib import Path

__all__ = ["BatchError", "BatchLock", "LOCK_NAME"]

LOCK_NAME = ".smoe-batch.lock"


class BatchError(Exception):
    """The batch cannot run (no inputs, folder locked); the message says what to do."""


class BatchLock:
    """Exclusive use of an output folder: ``OUTDIR/.smoe-batch.lock``.

    The lock is an OS advisory lock (``flock``) on that file, which holds the
    pid, host and start time of its owner.  The OS drops the lock when the
    process ends, however it ends, so a lock file whose lock is free is a
    leftover: it is taken over with a warning.
    """

    def __init__(self, outdir: Path):
        self.path = Path(outdir) / LOCK_NAME
        self._fd: int | None = None

    def __enter__(self):
        self.acquire()
        return self

    def __exit__(self, *exc):
        self.release()

    def acquire(self) -> None:
        try:
            import fcntl
        except ImportError:  # no flock (Windows): an exclusively created file
            return self._acquire_exclusive_create()
        for _ in range(10):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                holder = _describe_holder(_read_fd(fd))
                os.close(fd)
                raise BatchError(self._busy_message(holder)) from None
            # The owner before us may have removed the file just before we locked it.
            if self._same_file(fd):
                break
            os.close(fd)
        else:
            raise BatchError(f"cannot take the lock file {self.path}; another batch keeps replacing it")
        previous = _read_fd(fd)
        if previous.strip():
            warnings.warn(f"taking over the lock file {self.path} left by an earlier fit-batch "
                          f"({_describe_holder(previous)}) that is no longer running", stacklevel=3)
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(_holder_info()).encode(), 0)
        os.fsync(fd)
        self._fd = fd

    def _same_file(self, fd: int) -> bool:
        try:
            return os.fstat(fd).st_ino == os.stat(self.path).st_ino
        except FileNotFoundError:
            return False

    def _acquire_exclusive_create(self) -> None:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            holder = _describe_holder(self.path.read_text(errors="replace"))
            raise BatchError(self._busy_message(holder) + f" (if no batch runs, delete {self.path})") from None
        os.write(fd, json.dumps(_holder_info()).encode())
        self._fd = fd

    def _busy_message(self, holder: str) -> str:
        return (f"output folder {self.path.parent} is in use by another fit-batch ({holder}), lock file "
                f"{self.path}; wait for it to finish or choose another output folder with -o")

    def release(self) -> None:
        if self._fd is None:
            return
        # Removed while still locked, so that nobody locks a file that is about to vanish.
        with contextlib.suppress(OSError):
            self.path.unlink()
        os.close(self._fd)
        self._fd = None


def _holder_info() -> dict:
    return {"pid": os.getpid(), "host": socket.gethostname(),
            "started": datetime.datetime.now().isoformat(timespec="seconds")}


def _read_fd(fd: int) -> str:
    try:
        return os.pread(fd, 4096, 0).decode(errors="replace")
    except OSError:
        return ""


def _describe_holder(text: str) -> str:
    try:
        info = json.loads(text)
        return f"pid {info['pid']} on {info['host']}, started {info['started']}"
    except (ValueError, KeyError, TypeError):
        return "owner unknown"
