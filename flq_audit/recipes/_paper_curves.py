"""One audited run of a paper sweep as curves over epochs: TL of the paper's layers (from the
store) and train/test accuracy (from the run folder's ``metrics.json``)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from flq_audit._tags import stored_tags

#: The paper's L1..L3 of a 3-hidden-layer MLP: the outputs of its hidden layers. A store row
#: ``layers.k`` is the *input* of the k-th Linear (docs/concepts.md), so L1..L3 are the
#: store's ``layers.1``..``layers.3`` (``layers.0`` is the raw input).
PAPER_LAYERS = {"L1": "layers.1", "L2": "layers.2", "L3": "layers.3"}


def moving_average(values: np.ndarray, window: int) -> np.ndarray:
    """The mean of each run of ``window`` consecutive values (``np.convolve`` 'valid').

    >>> moving_average(np.array([1.0, 2.0, 3.0, 4.0]), 2).tolist()
    [1.5, 2.5, 3.5]
    """
    return np.convolve(values, np.ones(window) / window, mode="valid")


@dataclass(frozen=True)
class Curves:
    """One run's curves, one entry per checkpoint; ``value`` is its swept hyperparameter."""

    value: float
    epochs: np.ndarray
    tl: np.ndarray  # (checkpoint, len(PAPER_LAYERS))
    train_accuracy: np.ndarray
    test_accuracy: np.ndarray

    def window(self, epochs: int) -> int:
        """How many checkpoints span ``epochs`` epochs (at least 1, at most all)."""
        spacing = float(np.median(np.diff(self.epochs))) if len(self.epochs) > 1 else 1.0
        return max(1, min(len(self.epochs), round(epochs / spacing)))

    def smoothed(self, values: np.ndarray, epochs: int) -> tuple[np.ndarray, np.ndarray]:
        """``(epochs, values)`` of the trailing moving average over ``epochs`` epochs of the
        values clipped at 0 (how the paper's plots treat TL)."""
        w = self.window(epochs)
        return self.epochs[w - 1:], moving_average(np.clip(values, 0, None), w)

    def first_epoch(self, values: np.ndarray, level: float) -> float:
        """The first checkpoint epoch with ``values ≥ level`` (NaN if none)."""
        hits = np.flatnonzero(values >= level)
        return float(self.epochs[hits[0]]) if hits.size else float("nan")


def load_curves(store: Path, tag: str, layers: Sequence[str] = tuple(PAPER_LAYERS.values())) -> Curves:
    """The curves of one audited run: TL from its store (tagged ``tag``), accuracy from
    ``metrics.json`` in the run folder beside it."""
    from flq_audit.api import compute_metrics

    ds = compute_metrics(store, metrics=("tl",))
    folder = store.parent / store.name.removesuffix(".zarr")
    by_step = {c["step"]: c for c in json.loads((folder / "metrics.json").read_text())["checkpoints"]}
    rows = [by_step[int(step)] for step in ds["step"].values]
    return Curves(value=float(stored_tags(ds.attrs)[tag]),
                  epochs=np.array([r["epoch"] for r in rows], dtype=float),
                  tl=np.asarray(ds["target_linearity"].sel(layer=list(layers)).values, dtype=float),
                  train_accuracy=np.array([r["train_accuracy"] for r in rows], dtype=float),
                  test_accuracy=np.array([r["test_accuracy"] for r in rows], dtype=float))
