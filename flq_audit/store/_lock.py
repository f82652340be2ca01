"""A local store's kernel lock (``fcntl.flock``), not a file's content: held while an audit
creates or checks the template (steps are claimed per step, :mod:`flq_audit.store._claims`)
and for the whole of a ``metrics`` run.

The lock file ``STORE.lock`` sits beside the store. The kernel releases the lock when the
holding process exits, however it exits (SIGKILL included), so a lock is never stale and
nothing needs to be taken over or removed by hand: a file left by a killed process is just
locked again by the next run. The holder deletes the file while still holding the lock; a
process that locked a file after it was deleted (or replaced) sees that its file is no longer
the one at ``STORE.lock`` and starts again, so two processes never hold two different files.
"""

from __future__ import annotations

import errno
import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from flq_audit.errors import StoreLockedError


def lock_path(store: str | Path) -> Path:
    """``STORE.lock``, beside the store."""
    return Path(str(store).rstrip("/") + ".lock")


@contextmanager
def store_lock(path: str | Path, *, wait: bool = False) -> Iterator[None]:
    """Hold the store's lock for the duration of the block.

    Raises :class:`StoreLockedError` at once when another live process holds it (or, with
    ``wait=True``, blocks until it is free).
    """
    lock = lock_path(path)
    lock.parent.mkdir(parents=True, exist_ok=True)
    fd = _acquire(lock, path, wait=wait)
    try:
        _note_holder(fd)
        yield
    finally:
        lock.unlink(missing_ok=True)  # still held: nobody can lock this file and keep it
        os.close(fd)  # closing the descriptor releases the lock


def _acquire(lock: Path, store: str | Path, *, wait: bool) -> int:
    """Lock ``lock``; retry while the file we locked is not the one at the path any more."""
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except OSError as err:
            os.close(fd)
            if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise
            raise StoreLockedError(
                f"store {str(store)!r} is being written by another process (lock {str(lock)!r})",
                path=store, hint="Wait for it to finish; the lock is freed when that process "
                "exits, however it exits.",
            ) from None
        if _same_file(fd, lock):
            return fd
        os.close(fd)  # the holder deleted it after we opened it: lock the current file


def _same_file(fd: int, lock: Path) -> bool:
    try:
        on_disk = os.stat(lock)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (held.st_dev, held.st_ino) == (on_disk.st_dev, on_disk.st_ino)


def _note_holder(fd: int) -> None:
    """Write our PID into the lock file (for people; the lock itself is the kernel's)."""
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    except OSError:
        pass


__all__ = ["lock_path", "store_lock"]
