"""Write one step at a time into the pre-declared template, then mark it done (last)."""

from __future__ import annotations

import contextlib
import json
import threading
import warnings
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from flq_audit._faults import fault_point
from flq_audit._gram_maths import MatrixLike
from flq_audit._tags import TAGS_ATTR, merged_tags
from flq_audit.errors import StoreError
from flq_audit.store._gram_writes import GramWrites
from flq_audit.store._grow import open_fresh
from flq_audit.store._location import StoreLocation
from flq_audit.store._schema import (
    ACTIVATIONS,
    DONE,
    ERROR,
    FILES,
    SHA256,
    StoreLayout,
    fixed_width_strings_allowed,
    safe_text,
)

#: Step-indexed arrays that are bookkeeping, not data: never copied between steps.
_BOOKKEEPING = frozenset({DONE, ERROR, SHA256, FILES, "duplicate_of"})

#: Chunk writes allowed in flight at once (bounds memory to this many chunks + one per layer).
MAX_PENDING_WRITES = 4


def zarr_array(group: zarr.Group, name: str) -> zarr.Array:
    """The array ``name`` of ``group``; a :class:`StoreError` if it is missing or a group."""
    try:
        node = group[name]
    except KeyError as err:
        raise StoreError(f"the store has no variable {name!r}", path=str(group.store_path),
                         hint="Is this an flq-audit store?") from err
    if not isinstance(node, zarr.Array):
        raise StoreError(f"store variable {name!r} is a group, expected an array",
                         path=str(group.store_path))
    return node


class StepWriter:
    """Region writes into an existing store, aligned with its chunks.

    Activation rows are buffered per layer until a whole sample chunk is complete, so every
    write covers whole chunks (no read-modify-write) and memory stays at one chunk per layer.
    Chunk writes run on a background thread, overlapping the next forward passes; a step's
    ``done`` flag is written only after all of its writes have landed.
    """

    def __init__(self, path: str | Path | StoreLocation, layout: StoreLayout) -> None:
        self.location = StoreLocation.parse(path)
        self.path = self.location.display
        self.layout = layout
        self.group = open_fresh(self.location)  # not the consolidated copy: it may be older
        self.acts = zarr_array(self.group, ACTIVATIONS) if layout.probe is not None else None
        self.grams = GramWrites(self.group, layout)
        self.done = zarr_array(self.group, DONE)
        self.error = zarr_array(self.group, ERROR)
        self.sha = zarr_array(self.group, SHA256)
        self.files = zarr_array(self.group, FILES)
        # a resumed store may hold more steps than this run selected: index by its own axis
        self.steps = [int(x) for x in np.asarray(zarr_array(self.group, "step")[:])]
        self.labels = [str(x) for x in np.asarray(zarr_array(self.group, "label")[:])]
        self.commits = [str(x) for x in np.asarray(zarr_array(self.group, "commit")[:])]
        self._rows = layout.sample_chunk
        self._buffers: dict[int, np.ndarray] = {}
        self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="flq-audit-writer")
        self._slots = threading.BoundedSemaphore(MAX_PENDING_WRITES)
        self._pending: list[Future] = []
        self._filled: dict[int, int] = {}
        self._widths: dict[int, int] = {}
        self._chunk_start: dict[int, int] = {}
        self._variables: dict[str, zarr.Array] = {}

    def done_steps(self) -> list[int]:
        """The steps whose ``done`` flag is set."""
        flags = np.asarray(self.done[:], dtype=bool)
        return [s for s, flag in zip(self.steps, flags, strict=True) if flag]

    def reopen(self, steps: Sequence[int]) -> None:
        """Clear the ``done`` flag of ``steps`` so that this run writes them again (their
        old values stay until then; a run cut short leaves them to do, not half done)."""
        for step in steps:
            self.done[self.index_of(step)] = False

    def index_of(self, step: int) -> int:
        """Position of ``step`` on the store's step axis."""
        return self.steps.index(step)

    # ------------------------------------------------------------------ one step
    @contextlib.contextmanager
    def step(
        self, index: int, *, files: Sequence[str] = (),
        sha256: Sequence[str] | Future[list[str]] = (), commit: str | None = None,
    ) -> Iterator[StepTransaction]:
        """Write one step: ``done(step)`` is set last, once every write has landed.

        ``commit`` (a Hub revision's pinned SHA) replaces the step's ``commit`` coordinate,
        so the store names the commit its values come from.

        ``sha256`` may be a future (files hashed while the step runs). On an exception the
        step is recorded in ``error(step)`` with ``done`` false (its partial data is
        rewritten on resume) and the exception propagates.
        """
        self._reset_buffers()
        try:
            yield StepTransaction(self, index)
            for layer_index in list(self._buffers):
                self._flush(index, layer_index)
            self.wait()
            hashes = list(sha256.result() if isinstance(sha256, Future) else sha256)
        except Exception as err:
            with contextlib.suppress(Exception):
                self.wait()
            self.error[index] = safe_text(str(err))
            self.done[index] = False
            raise
        fault_point("step-commit", step=self.steps[index])
        self._commit(index, [Path(f).name for f in files], hashes, commit)

    def _commit(self, index: int, names: list[str], hashes: list[str],
                commit: str | None = None) -> None:
        """The step's bookkeeping, written side by side on the pool; ``done`` last, alone."""
        if commit and commit != self.commits[index]:  # a branch that moved since listing
            self._submit(zarr_array(self.group, "commit"), (index,), commit)
            self.commits[index] = commit
        self._submit(self.files, (index,), json.dumps(names))
        self._submit(self.sha, (index,), json.dumps(hashes))
        self._submit(self.error, (index,), "")
        self.wait()
        self.done[index] = True

    def _reset_buffers(self) -> None:
        self._buffers.clear()
        self._widths.clear()
        self._filled.clear()
        self._chunk_start.clear()

    def write_batch(self, step_index: int, layer_index: int, start: int, block: np.ndarray) -> None:
        """Add rows ``start:start+len(block)`` of one layer; flush each completed chunk."""
        buffer = self._buffers.get(layer_index)
        if buffer is None:  # whole feature chunks up to the layer's width, no padding chunks
            buffer = self._new_buffer(block.shape[1])
            self._buffers[layer_index] = buffer
            self._widths[layer_index] = block.shape[1]
            self._filled[layer_index] = 0
            self._chunk_start[layer_index] = start
        offset = 0
        while offset < block.shape[0]:
            filled = self._filled[layer_index]
            buffer = self._buffers[layer_index]  # a flush hands the old buffer to its write
            take = min(self._rows - filled, block.shape[0] - offset)
            buffer[filled : filled + take, : block.shape[1]] = block[offset : offset + take]
            self._filled[layer_index] = filled + take
            offset += take
            chunk_end = self._chunk_start[layer_index] + self._filled[layer_index]
            n_samples = self.layout.probe.n_samples if self.layout.probe is not None else 0
            if self._filled[layer_index] == self._rows or chunk_end == n_samples:
                self._flush(step_index, layer_index)

    def _new_buffer(self, width: int) -> np.ndarray:
        """Rows of one chunk, NaN in the padding columns beyond ``width``; the rows are
        filled batch by batch and only filled rows are written."""
        columns = self.layout.feature_extent(width)
        buffer = np.empty((self._rows, columns), dtype=self.layout.activation_dtype)
        buffer[:, width:] = np.nan
        return buffer

    def _flush(self, step_index: int, layer_index: int) -> None:
        rows = self._filled[layer_index]
        if rows == 0:
            return
        begin = self._chunk_start[layer_index]
        buffer = self._buffers[layer_index]
        region = (step_index, layer_index, slice(begin, begin + rows),
                  slice(0, buffer.shape[1]))
        if self.acts is None:
            raise StoreError("this store holds no activations (audited without a probe)",
                             path=self.path)
        self._submit(self.acts, region, buffer[:rows])
        # the buffer now belongs to the pending write; start the next chunk in a fresh one
        self._buffers[layer_index] = self._new_buffer(self._widths[layer_index])
        self._chunk_start[layer_index] = begin + rows
        self._filled[layer_index] = 0

    def _submit(self, array: zarr.Array, region: tuple, data: np.ndarray | str) -> None:
        def write() -> None:
            array[region] = data

        self._submit_job(write)

    def _submit_job(self, job: Callable[[], None]) -> None:
        """Run ``job`` on the writer's threads (at most MAX_PENDING_WRITES queued)."""
        self._slots.acquire()

        def run() -> None:
            try:
                job()
            finally:
                self._slots.release()

        self._pending.append(self._pool.submit(run))

    def wait(self) -> None:
        """Block until every submitted write has landed; re-raise the first failure."""
        pending, self._pending = self._pending, []
        for future in pending:
            future.result()

    def abandon(self) -> None:
        """Stop without waiting (interrupt/crash): unfinished steps are not marked done."""
        self._pool.shutdown(wait=False, cancel_futures=True)

    def close(self) -> None:
        try:
            self.wait()
        finally:
            self._pool.shutdown(wait=True)

    def write_gram(self, step_index: int, layer_index: int, gram: np.ndarray) -> None:
        """One layer's dense Gram (a layer the store keeps dense)."""
        self._submit(*self.grams.dense(step_index, layer_index, gram))

    def write_grams(self, step_index: int, matrices: Sequence[tuple[int, MatrixLike]]) -> None:
        """Write what the store keeps of each ``(layer index, d_out × d_in weight)``, in the
        layer's form (dense WᵀW in float64, the weight itself, or the eigenvalues), one
        matrix at a time on one writer thread: the caller goes on (e.g. replays the probe)
        meanwhile. The weights are made here, on the caller's thread (``matrices`` may read
        them from the checkpoint files when iterated), and held until the job has run."""
        kept = [(layer, matrix) for layer, matrix in matrices if self.grams.keeps(layer)]

        def job() -> None:
            for layer_index, matrix in kept:
                array, region, values = self.grams.of_weight(step_index, layer_index, matrix)
                array[region] = values

        if kept:
            self._submit_job(job)

    def copy_step(self, source_index: int, target_index: int) -> None:
        """Copy a done step's data arrays into another step (byte-identical checkpoints)."""
        with warnings.catch_warnings():  # zarr notes the claims folder, which is no array
            warnings.simplefilter("ignore")
            names = list(self.group.array_keys())
        for name in names:
            array = zarr_array(self.group, name)
            dims = getattr(array.metadata, "dimension_names", None) or ()
            if name in _BOOKKEEPING or array.ndim < 2 or not dims or dims[0] != "step":
                continue
            rows = self._rows if name == ACTIVATIONS else None
            layers: list[int | None] = list(range(array.shape[1])) if array.ndim >= 3 else [None]
            for layer in layers:
                if rows and layer is not None:
                    for begin in range(0, array.shape[2], rows):
                        window = slice(begin, begin + rows)
                        array[target_index, layer, window] = array[source_index, layer, window]
                elif layer is None:
                    array[target_index] = array[source_index]
                else:
                    array[target_index, layer] = array[source_index, layer]

    def write_variable(self, step_index: int, name: str, values: np.ndarray) -> None:
        """One step's slab of an extension variable, padded with its fill value."""
        array = self._variable(name)
        values = np.asarray(values)
        target = array.shape[1:]
        if values.ndim != len(target) or any(v > t for v, t in zip(values.shape, target,
                                                                   strict=True)):
            raise ValueError(f"variable {name!r}: values of shape {values.shape} do not fit "
                             f"one step of shape {target}")
        padded = np.full(target, array.fill_value, dtype=array.dtype)
        padded[tuple(slice(0, n) for n in values.shape)] = values
        self._submit(array, (step_index,), padded)

    def _variable(self, name: str) -> zarr.Array:
        """The extension variable ``name``, opened once per writer (opening reads metadata)."""
        array = self._variables.get(name)
        if array is None:
            if name not in self.group:
                raise KeyError(f"the store has no variable {name!r} (declare it in variables())")
            array = self._variables[name] = zarr_array(self.group, name)
        return array

    def finish(self) -> dict[str, dict[str, object]]:
        """The store's provenance and consolidated metadata (see :func:`finish_store`)."""
        return finish_store(self.group, self.location, tags=self.layout.tags)


def step_provenance(group: zarr.Group) -> dict[str, dict[str, object]]:
    """``{step: {label, files, sha256}}`` for every done step of a store's group."""
    flags = np.asarray(zarr_array(group, DONE)[:], dtype=bool)
    files, shas = np.asarray(zarr_array(group, FILES)[:]), np.asarray(zarr_array(group, SHA256)[:])
    steps = np.asarray(zarr_array(group, "step")[:])
    labels = np.asarray(zarr_array(group, "label")[:])
    return {str(int(step)): {"label": str(labels[i]),
                             "files": json.loads(str(files[i]) or "[]"),
                             "sha256": json.loads(str(shas[i]) or "[]")}
            for i, step in enumerate(steps) if flags[i]}


def finish_store(group: zarr.Group | None, location: StoreLocation,
                 tags: tuple[tuple[str, Any], ...] = ()) -> dict[str, dict[str, object]]:
    """Write the ``checkpoints`` provenance of every done step and consolidate the metadata:
    what each writer does as it finishes (the last one leaves them complete; a rerun that
    finds every step done, or ``flq-audit show --repair``, does it again). Returns the
    provenance written. ``tags`` (the audit's ``--tag`` pairs) are merged into the store's
    ``tags`` attribute.

    Done under the store-wide ``axis`` claim, from the store's metadata as it is now (not
    ``group``'s, opened earlier: another writer may have grown the axis or stamped metrics
    since), after finishing any interrupted growth of the axis."""
    from flq_audit.store import consolidate
    from flq_audit.store._claims import StepClaims
    from flq_audit.store._grow import axis_claim, finish_journal

    claims = StepClaims(location)
    try:
        with axis_claim(claims):
            finish_journal(location)
            fresh = open_fresh(location)
            provenance = step_provenance(fresh)
            with fixed_width_strings_allowed():  # rewriting the group metadata lists <U arrays
                fresh.attrs["checkpoints"] = json.dumps(provenance)
                if tags:
                    fresh.attrs[TAGS_ATTR] = merged_tags(fresh.attrs, tags)
            consolidate(location)
    finally:
        claims.close()
    return provenance


class StepTransaction:
    """The writes of one step, handed out by :meth:`StepWriter.step`."""

    def __init__(self, writer: StepWriter, index: int) -> None:
        self._writer = writer
        self.index = index

    def write_rows(self, layer_index: int, start: int, rows: np.ndarray) -> None:
        """Activation rows ``start:start+len(rows)`` of one layer."""
        self._writer.write_batch(self.index, layer_index, start, rows)

    def write_gram(self, layer_index: int, gram: np.ndarray) -> None:
        """One layer's Gram (padded to the store's width)."""
        self._writer.write_gram(self.index, layer_index, gram)

    def write_grams(self, matrices: Sequence[tuple[int, MatrixLike]]) -> None:
        """The Grams of ``(layer index, weight matrix)`` pairs, computed in the background."""
        self._writer.write_grams(self.index, matrices)

    def write(self, name: str, values: np.ndarray) -> None:
        """This step's values of an extension variable (trailing dims may be shorter)."""
        self._writer.write_variable(self.index, name, values)

    def copy_from(self, source_index: int) -> None:
        """Every data array of an earlier, done step (identical checkpoint files)."""
        self._writer.copy_step(source_index, self.index)
