"""Write one step at a time into the pre-declared template, then mark it done (last)."""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import zarr

from flq_audit.store._schema import (
    ACTIVATIONS,
    DONE,
    ERROR,
    FILES,
    GRAM,
    SHA256,
    StoreLayout,
    safe_text,
)

#: Chunk writes allowed in flight at once (bounds memory to this many chunks + one per layer).
MAX_PENDING_WRITES = 4


class StepWriter:
    """Region writes into an existing store, aligned with its chunks.

    Activation rows are buffered per layer until a whole sample chunk is complete, so every
    write covers whole chunks (no read-modify-write) and memory stays at one chunk per layer.
    Chunk writes run on a background thread, overlapping the next forward passes; a step's
    ``done`` flag is written only after all of its writes have landed.
    """

    def __init__(self, path: str | Path, layout: StoreLayout) -> None:
        self.path = Path(path)
        self.layout = layout
        self.group = zarr.open_group(str(self.path), mode="r+")
        self.acts = self.group[ACTIVATIONS] if layout.probe is not None else None
        self.grams = self.group[GRAM]
        self.done = self.group[DONE]
        self.error = self.group[ERROR]
        self.sha = self.group[SHA256]
        self.files = self.group[FILES]
        # a resumed store may hold more steps than this run selected: index by its own axis
        self.steps = [int(x) for x in self.group["step"][:]]
        self.labels = [str(x) for x in self.group["label"][:]]
        self._rows = layout.sample_chunk
        self._width = layout.feature_max
        self._buffers: dict[int, np.ndarray] = {}
        self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="flq-audit-writer")
        self._slots = threading.BoundedSemaphore(MAX_PENDING_WRITES)
        self._pending: list[Future] = []
        self._filled: dict[int, int] = {}
        self._chunk_start: dict[int, int] = {}

    def done_steps(self) -> list[int]:
        flags = np.asarray(self.done[:], dtype=bool)
        return [s for s, flag in zip(self.steps, flags, strict=True) if flag]

    def index_of(self, step: int) -> int:
        """Position of ``step`` on the store's step axis."""
        return self.steps.index(step)

    # ------------------------------------------------------------------ one step
    def begin_step(self) -> None:
        self._buffers.clear()
        self._filled.clear()
        self._chunk_start.clear()

    def write_batch(self, step_index: int, layer_index: int, start: int, block: np.ndarray) -> None:
        """Add rows ``start:start+len(block)`` of one layer; flush each completed chunk."""
        buffer = self._buffers.get(layer_index)
        if buffer is None:
            buffer = np.full((self._rows, self._width), np.nan, dtype=self.layout.activation_dtype)
            self._buffers[layer_index] = buffer
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

    def _flush(self, step_index: int, layer_index: int) -> None:
        rows = self._filled[layer_index]
        if rows == 0:
            return
        begin = self._chunk_start[layer_index]
        buffer = self._buffers[layer_index]
        region = (step_index, layer_index, slice(begin, begin + rows), slice(None))
        self._submit(self.acts, region, buffer[:rows])
        # the buffer now belongs to the pending write; start the next chunk in a fresh one
        self._buffers[layer_index] = np.full_like(buffer, np.nan)
        self._chunk_start[layer_index] = begin + rows
        self._filled[layer_index] = 0

    def _submit(self, array: zarr.Array, region: tuple, data: np.ndarray) -> None:
        self._slots.acquire()

        def write() -> None:
            try:
                array[region] = data
            finally:
                self._slots.release()

        self._pending.append(self._pool.submit(write))

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
        padded = np.full(
            (self.layout.gram_max, self.layout.gram_max), np.nan, dtype=self.layout.gram_dtype
        )
        padded[: gram.shape[0], : gram.shape[1]] = gram
        self._submit(self.grams, (step_index, layer_index), padded)

    def copy_step(self, source_index: int, target_index: int) -> None:
        """Copy a done step's arrays into another step (byte-identical checkpoints)."""
        self.begin_step()  # a failed step before this one may have left half-filled buffers
        names = [n for n in self.group.array_keys()
                 if n in (ACTIVATIONS, GRAM, "prediction", "classifier_weight")]
        for name in names:
            array = self.group[name]
            if array.ndim < 2 or array.shape[0] != len(self.steps):
                continue
            rows = self._rows if name == ACTIVATIONS else None
            for layer in range(array.shape[1]) if array.ndim >= 3 else [None]:
                if rows:
                    for begin in range(0, array.shape[2], rows):
                        region = (layer, slice(begin, begin + rows))
                        array[(target_index, *region)] = array[(source_index, *region)]
                elif layer is None:
                    array[target_index] = array[source_index]
                else:
                    array[target_index, layer] = array[source_index, layer]

    def write_predictions(self, step_index: int, predictions: np.ndarray) -> None:
        self._submit(self.group["prediction"], (step_index, slice(None)),
                     predictions.astype(np.int64))

    def write_classifier(self, step_index: int, weight: np.ndarray) -> None:
        array = self.group["classifier_weight"]
        padded = np.full(array.shape[1:], np.nan)
        padded[: weight.shape[0], : weight.shape[1]] = weight
        self._submit(array, (step_index,), padded)

    def write_fl(self, step_index: int, layer_index: int, result: object) -> None:
        """Write one layer's FL quantities (a :class:`FLLayerResult`)."""
        size = self.layout.gram_max
        for name in ("vcs", "gram_change", "remainder"):
            matrix = getattr(result, name)
            padded = np.full((size, size), np.nan)
            padded[: matrix.shape[0], : matrix.shape[1]] = matrix
            self.group[f"fl_{name}"][step_index, layer_index] = padded
        for name in ("r_vcs", "r_step", "residual"):
            self.group[f"fl_{name}"][step_index, layer_index] = getattr(result, name)

    def finish_step(
        self, step_index: int, files: Sequence[str], sha256: Sequence[str]
    ) -> None:
        """Record provenance, then set ``done`` — the very last write of a step."""
        for layer_index in list(self._buffers):
            self._flush(step_index, layer_index)
        self.wait()
        self.files[step_index] = json.dumps([Path(f).name for f in files])
        self.sha[step_index] = json.dumps(list(sha256))
        self.error[step_index] = ""
        self.done[step_index] = True

    def fail_step(self, step_index: int, message: str) -> None:
        # the step failed already; its partial data is rewritten on resume
        with contextlib.suppress(Exception):
            self.wait()
        self.error[step_index] = safe_text(message)
        self.done[step_index] = False

    def step_provenance(self) -> dict[str, dict[str, object]]:
        """``{step: {label, files, sha256}}`` for every done step."""
        flags = np.asarray(self.done[:], dtype=bool)
        files, shas = self.files[:], self.sha[:]
        out: dict[str, dict[str, object]] = {}
        for i, step in enumerate(self.steps):
            if flags[i]:
                out[str(step)] = {
                    "label": self.labels[i],
                    "files": json.loads(str(files[i]) or "[]"),
                    "sha256": json.loads(str(shas[i]) or "[]"),
                }
        return out
