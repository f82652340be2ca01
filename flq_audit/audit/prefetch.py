"""Fetch the next checkpoint on a background thread while this one replays.

A :class:`Prefetcher` walks the steps in order on one daemon thread and hands each step's
:class:`Fetched` (files, checksums and, where the audit asks for it, loaded weights, or the
error that stopped them) to the audit loop. A semaphore bounds what is resident: the step
being replayed plus ``ahead`` prefetched ones (``ahead=1``: at most two checkpoints in
memory at once when the weights are read ahead). The loop releases a step's slot only
after it has dropped every reference to that step's weights. The audit reads the weights
ahead only when an extension compares a step with the next one
(:func:`flq_audit.audit.step.reads_ahead`): else a step's weights are read when it starts,
and one checkpoint is resident.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

from flq_audit.sources import CheckpointRef
from flq_audit.weights import file_sha256

T = TypeVar("T")


@dataclass
class Fetched:
    """One step's files, their sha256 and what was loaded from them, or why it failed.

    ``fetch_error`` happened before any file was on disk (the step is not started);
    ``load_error`` happened reading the files (the step is recorded as failed); ``read``
    says whether the weights were read (the prefetch thread may fetch the files only).
    """

    ref: CheckpointRef
    paths: list[Path] = field(default_factory=list)
    sha256: Sequence[str] | Future[list[str]] = ()
    built: Any = None
    state: Mapping[str, Any] = field(default_factory=dict)
    fetch_error: Exception | None = None
    load_error: Exception | None = None
    read: bool = False


def checksums(ref: CheckpointRef, paths: Sequence[Path]) -> list[str]:
    """The sha256 of each file: the Hub's LFS hash when it listed one per file (the download
    was verified against it), else computed from the file."""
    if ref.lfs_sha256 and len(ref.lfs_sha256) == len(paths):
        return list(ref.lfs_sha256)
    return [file_sha256(p) for p in paths]


def checksums_in_background(ref: CheckpointRef, paths: Sequence[Path]) -> Future[list[str]]:
    """:func:`checksums` on a daemon thread (it overlaps the forward pass)."""
    future: Future[list[str]] = Future()

    def work() -> None:
        try:
            future.set_result(checksums(ref, paths))
        except Exception as err:
            future.set_exception(err)

    threading.Thread(target=work, name="flq-audit-sha256", daemon=True).start()
    return future


class Prefetcher(Generic[T]):
    """Produce ``load(item)`` for each item in order, ``ahead`` items before they are needed."""

    def __init__(self, items: Iterable[Any], load: Callable[[Any], T], *, ahead: int = 1) -> None:
        if ahead < 1:
            raise ValueError(f"ahead must be at least 1, got {ahead}")
        self._items = list(items)
        self._load = load
        self._slots = threading.Semaphore(ahead + 1)  # the step in use + `ahead` loaded ones
        self._ready: queue.Queue[tuple[T | None, BaseException | None]] = queue.Queue()
        self._stop = threading.Event()
        self._taken = 0
        self._peeked: tuple[T | None, BaseException | None] | None = None
        self._thread = threading.Thread(target=self._run, name="flq-audit-prefetch", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        for item in self._items:
            self._slots.acquire()
            if self._stop.is_set():
                return
            try:
                self._ready.put((self._load(item), None))
            except BaseException as err:  # handed to the loop, raised there
                self._ready.put((None, err))

    def next(self) -> T:
        """The next item's result (blocks until it is loaded); re-raises what loading raised."""
        if self._peeked is not None:
            (result, error), self._peeked = self._peeked, None
        else:
            result, error = self._ready.get()
        self._taken += 1
        if error is not None:
            raise error
        return result  # type: ignore[return-value]  # not None when error is None

    def peek(self) -> T | None:
        """The result :meth:`next` will return, without taking it (blocks until it is loaded);
        ``None`` when no item is left or loading it raised (``next`` raises that)."""
        if self._peeked is None:
            if self._taken >= len(self._items) or self._stop.is_set():
                return None
            self._peeked = self._ready.get()
        result, error = self._peeked
        return None if error is not None else result

    def release(self) -> None:
        """The caller holds no reference to the last item any more: load one more."""
        self._slots.release()

    def close(self) -> None:
        """Stop after the item being loaded (the thread is a daemon: exit never waits)."""
        self._stop.set()
        self._slots.release()
        while not self._ready.empty():  # drop loaded results now
            self._ready.get_nowait()
