"""A local store's kernel lock, held while an audit creates or checks the template (steps
are claimed per step, :mod:`flq_audit.store._claims`) and for the whole of a ``metrics`` run.

On Linux the lock is a Unix socket bound in the abstract namespace under a name derived from
the store's resolved path: binding it is exclusive, and the kernel frees the name when the
holding process exits, however it exits (SIGKILL included). Nothing is written to disk, so
no lock file can outlive its process. Elsewhere, ``fcntl.flock`` on ``STORE.lock`` beside the
store (:func:`lock_path`); its holder deletes the file when it releases the lock, and a file
left by a killed process is simply locked again.
"""

from __future__ import annotations

import errno
import hashlib
import os
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from flq_audit.errors import StoreLockedError

#: Seconds between tries of a waiting lock.
POLL_S = 0.02
_ABSTRACT = sys.platform.startswith("linux")


def lock_path(store: str | Path) -> Path:
    """``STORE.lock`` beside the store: the lock file where there is no abstract namespace
    (and what versions up to 0.2 left behind after a kill)."""
    return Path(str(store).rstrip("/") + ".lock")


def lock_name(store: str | Path) -> bytes:
    """The abstract socket name of a store's lock: one per resolved path."""
    resolved = os.path.realpath(str(store).rstrip("/") or "/")
    digest = hashlib.sha256(os.fsencode(resolved)).hexdigest()
    return b"\0flq-audit-store-lock/" + digest.encode("ascii")


@contextmanager
def store_lock(path: str | Path, *, wait: bool = False) -> Iterator[None]:
    """Hold the store's lock for the duration of the block.

    Raises :class:`StoreLockedError` at once when another live process holds it (or, with
    ``wait=True``, blocks until it is free).
    """
    if not _ABSTRACT:
        with _file_lock(path, wait=wait):
            yield
        return
    held = _bind(path, wait=wait)
    try:
        yield
    finally:
        held.close()  # the name is free again


def _locked(store: str | Path, where: str) -> StoreLockedError:
    return StoreLockedError(
        f"store {str(store)!r} is being written by another process ({where})", path=store,
        hint="Wait for it to finish; the lock is freed when that process exits, however it "
        "exits.")


def _bind(store: str | Path, *, wait: bool) -> socket.socket:
    name = lock_name(store)
    while True:
        held = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)  # not inherited by exec
        try:
            held.bind(name)
            return held
        except OSError as err:
            held.close()
            if err.errno != errno.EADDRINUSE:
                raise
            if not wait:
                raise _locked(store, "its kernel lock is held") from None
            time.sleep(POLL_S)


@contextmanager
def _file_lock(path: str | Path, *, wait: bool) -> Iterator[None]:
    import fcntl

    lock = lock_path(path)
    lock.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except OSError as err:
            os.close(fd)
            if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise
            raise _locked(path, f"lock {str(lock)!r}") from None
        if _same_file(fd, lock):
            break
        os.close(fd)  # the holder deleted it after we opened it: lock the current file
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)  # still held: nobody can lock this file and keep it
        os.close(fd)  # closing the descriptor releases the lock


def _same_file(fd: int, lock: Path) -> bool:
    try:
        on_disk = os.stat(lock)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (held.st_dev, held.st_ino) == (on_disk.st_dev, on_disk.st_ino)


__all__ = ["lock_name", "lock_path", "store_lock"]
