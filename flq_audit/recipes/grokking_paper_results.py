"""The grokking reproduction's table and figures (the paper's Figs. 13 and 14).

Layers: the paper's L1, L2, L3 are the outputs of the three hidden layers. A store row
``layers.k`` is the *input* of the k-th Linear (docs/concepts.md), so L1..L3 are the store's
``layers.1``..``layers.3`` (``layers.0`` is the raw one-hot input, constant over training).
Curves are treated as the paper's plots treat them: TL clipped at 0, then a trailing moving
average over 20 epochs; a value "at the end" is that average over the last 20 epochs.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from flq_audit.recipes._reproduction import Comparison, Results, write_results

#: The paper's L1..L3 and the store layers that hold them.
PAPER_LAYERS = {"L1": "layers.1", "L2": "layers.2", "L3": "layers.3"}
SMOOTH_EPOCHS = 20
EARLY_EPOCHS = 150  # the gap's early peak (before grokking) is looked for up to this epoch
TL_TOLERANCE = 0.05  # reading error (±0.02) plus the spread of one seed of a grokking run
FIGURE = "figures_13_14.png"

# Fig. 13 at ≈ epoch 480, read off the figure: (L1, L2, L3) TL and the test accuracy.
PAPER_END_TL = {0.0: (0.19, 0.29, 0.55), 0.25: (0.29, 0.51, 0.60), 0.5: (0.24, 0.47, 0.53),
                0.75: (0.17, 0.32, 0.47)}
PAPER_TEST_ACCURACY = {0.0: 0.025, 0.25: 0.925, 0.5: 1.0, 0.75: 1.0}
PAPER_TEST_TOLERANCE = {0.0: 0.02, 0.25: 0.05, 0.5: 0.05, 0.75: 0.05}
PAPER_GROKKED_BY = {0.5: 300, 0.75: 350}  # first epoch with test accuracy ≈ 1
# Fig. 14: the early peak of the gap L3 − L2 (λ = 0: flat).
PAPER_GAP_PEAK = {0.0: 0.26, 0.25: 0.20, 0.5: 0.17, 0.75: 0.14}


@dataclass(frozen=True)
class Run:
    """One run's curves, one entry per checkpoint."""

    weight_decay: float
    epochs: np.ndarray
    tl: np.ndarray  # (checkpoint, 3): the paper's L1, L2, L3
    train_accuracy: np.ndarray
    test_accuracy: np.ndarray

    @property
    def window(self) -> int:
        """Checkpoints per 20 epochs (at least 1)."""
        spacing = float(np.median(np.diff(self.epochs))) if len(self.epochs) > 1 else 1.0
        return max(1, min(len(self.epochs), round(SMOOTH_EPOCHS / spacing)))

    def smoothed(self, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(epochs, values)`` of the trailing moving average of the clipped values."""
        return self.epochs[self.window - 1:], moving_average(np.clip(values, 0, None), self.window)

    def end_tl(self) -> np.ndarray:
        return np.array([self.smoothed(self.tl[:, k])[1][-1] for k in range(3)])

    def gap(self) -> tuple[np.ndarray, np.ndarray]:
        """The TL gap L3 − L2 of the smoothed, clipped curves (Fig. 14)."""
        epochs, l3 = self.smoothed(self.tl[:, 2])
        return epochs, l3 - self.smoothed(self.tl[:, 1])[1]

    def gap_peak(self) -> float:
        epochs, gap = self.gap()
        return float(gap[epochs <= EARLY_EPOCHS].max()) if (epochs <= EARLY_EPOCHS).any() else float(gap[0])

    def first_epoch(self, accuracy: np.ndarray, level: float) -> float:
        """The first checkpoint epoch with ``accuracy ≥ level`` (NaN if none)."""
        hits = np.flatnonzero(accuracy >= level)
        return float(self.epochs[hits[0]]) if hits.size else float("nan")


def moving_average(values: np.ndarray, window: int) -> np.ndarray:
    """The mean of each run of ``window`` consecutive values (``np.convolve`` 'valid').

    >>> moving_average(np.array([1.0, 2.0, 3.0, 4.0]), 2).tolist()
    [1.5, 2.5, 3.5]
    """
    return np.convolve(values, np.ones(window) / window, mode="valid")


def load_run(store: Path) -> Run:
    """The curves of one audited run: TL from its store, accuracy from ``metrics.json``."""
    from flq_audit.api import compute_metrics

    ds = compute_metrics(store, metrics=("tl",))
    weight_decay = float(json.loads(ds.attrs["tags"])["weight_decay"])
    tl = ds["target_linearity"].sel(layer=list(PAPER_LAYERS.values())).values
    folder = store.parent / store.name.removesuffix(".zarr")
    by_step = {c["step"]: c for c in json.loads((folder / "metrics.json").read_text())["checkpoints"]}
    rows = [by_step[int(step)] for step in ds["step"].values]
    return Run(weight_decay=weight_decay, epochs=np.array([r["epoch"] for r in rows], dtype=float),
               tl=np.asarray(tl, dtype=float),
               train_accuracy=np.array([r["train_accuracy"] for r in rows]),
               test_accuracy=np.array([r["test_accuracy"] for r in rows]))


def _label(weight_decay: float) -> str:
    return f"λ = {weight_decay:g}"


def _compared(quantity: str, toolkit: float, paper: float | None, tolerance: float | None,
              note: str = "") -> Comparison:
    """A numeric row; one for a λ the paper's figures do not show says so."""
    if paper is None:
        return Comparison(quantity, toolkit, None, verdict="not compared",
                          note="the paper's code runs this λ; its figures do not show it")
    return Comparison(quantity, toolkit, paper, tolerance=tolerance, note=note)


def run_rows(run: Run) -> list[Comparison]:
    """Fig. 13's end values and Fig. 14's gap for one run, beside the paper's."""
    lam, wd = _label(run.weight_decay), run.weight_decay
    paper_tl = PAPER_END_TL.get(wd)
    end = run.end_tl()
    rows = [_compared(f"TL {name}, last 20 epochs, {lam}", float(end[k]),
                      None if paper_tl is None else paper_tl[k], TL_TOLERANCE)
            for k, name in enumerate(PAPER_LAYERS)]
    ordered = bool(end[0] < end[1] < end[2])
    rows.append(Comparison(f"TL ordered by depth (L1 < L2 < L3) at the end, {lam}",
                           "yes" if ordered else "no", "yes", kind="qualitative",
                           verdict="reproduced" if ordered else "differs", note="Fig. 13"))
    rows.append(_compared(f"test accuracy at the end, {lam}", float(run.test_accuracy[-1]),
                          PAPER_TEST_ACCURACY.get(wd), PAPER_TEST_TOLERANCE.get(wd)))
    if wd in PAPER_GROKKED_BY:
        rows.append(_compared(f"first epoch with test accuracy ≥ 0.95, {lam}",
                              run.first_epoch(run.test_accuracy, 0.95), float(PAPER_GROKKED_BY[wd]),
                              50.0, note="the paper's test accuracy reaches ≈ 1 by then"))
    trained = run.first_epoch(run.train_accuracy, 0.99)
    rows.append(Comparison(f"first epoch with train accuracy ≥ 0.99, {lam}", trained, "≈ 20–100",
                           verdict="reproduced" if trained <= 100 else "differs"))
    rows.append(_compared(f"TL gap L3 − L2, early peak (epochs ≤ {EARLY_EPOCHS}), {lam}",
                          run.gap_peak(), PAPER_GAP_PEAK.get(wd), TL_TOLERANCE, note="Fig. 14"))
    paper_gap = None if paper_tl is None else round(paper_tl[2] - paper_tl[1], 2)
    rows.append(_compared(f"TL gap L3 − L2, last 20 epochs, {lam}", float(run.gap()[1][-1]),
                          paper_gap, TL_TOLERANCE,
                          note="L3 − L2 of the Fig. 13 read-offs (Fig. 14 runs longer)"))
    return rows


def narrowing_row(runs: Sequence[Run]) -> Comparison:
    """Fig. 14's claim: the gap narrows when a run generalizes and stays wide when it does not."""
    grokked = [r for r in runs if r.test_accuracy[-1] >= 0.9]
    memorized = [r for r in runs if r.test_accuracy[-1] < 0.1]
    narrowed = [r for r in grokked if r.gap()[1][-1] < r.gap_peak() - 0.02]
    stayed = [r for r in memorized if r.gap()[1][-1] >= r.gap_peak() - 0.05]
    text = (f"narrows in {len(narrowed)} of {len(grokked)} runs that generalize; "
            f"stays within 0.05 of its peak in {len(stayed)} of {len(memorized)} that do not")
    holds = (bool(grokked) and bool(memorized) and len(narrowed) == len(grokked)
             and len(stayed) == len(memorized))
    return Comparison("TL gap L3 − L2 narrows after grokking, stays wide without it", text,
                      "narrows for λ ≥ 0.25; flat for λ = 0", kind="qualitative",
                      verdict="reproduced" if holds else "differs",
                      note="" if holds else "needs runs that generalize and one that does not")


def draw(runs: Sequence[Run], path: Path) -> Path:
    """Fig. 13 (top row: TL per layer and accuracy vs epoch) and Fig. 14 (bottom row: the gap
    L3 − L2 and the generalization error vs epoch), one column per λ."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(3.4 * len(runs), 6.2), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, len(runs), squeeze=False, sharex=True)
    for col, run in enumerate(runs):
        top, bottom = axes[0][col], axes[1][col]
        for k, name in enumerate(PAPER_LAYERS):
            top.plot(*run.smoothed(run.tl[:, k]), label=f"TL {name}")
        top.plot(run.epochs, run.train_accuracy, ":", color="grey", label="train acc")
        top.plot(run.epochs, run.test_accuracy, "--", color="black", label="test acc")
        top.set(title=f"Fig. 13, {_label(run.weight_decay)}", ylim=(0, 1.02))
        epochs, gap = run.gap()
        bottom.plot(epochs, gap, color="tab:red", label="TL L3 − L2")
        bottom.set(title=f"Fig. 14, {_label(run.weight_decay)}", xlabel="epoch")
        twin = bottom.twinx()
        twin.plot(run.epochs, 1.0 - run.test_accuracy, "--", color="black", label="gen. error")
        twin.set(ylim=(0, 1.02))
        if col == 0:
            top.legend(fontsize=7, loc="center right")
            bottom.set_ylabel("TL gap L3 − L2 (train set)")
            bottom.legend(fontsize=7, loc="upper left")
            twin.legend(fontsize=7, loc="upper right")
        if col == len(runs) - 1:
            twin.set_ylabel("generalization error (1 − test acc)")
    fig.savefig(path, dpi=110)
    return path


def write(out: Path, stores: Sequence[Path], *, size: str, command: str, settings: dict[str, Any],
          started: float) -> Path:
    """The rows, the figure and ``results.json`` / ``results.md`` of one recipe run."""
    runs = sorted((load_run(s) for s in stores), key=lambda r: r.weight_decay)
    draw(runs, out / FIGURE)
    rows = [row for run in runs for row in run_rows(run)] + [narrowing_row(runs)]
    settings = {**settings, "paper_layers": PAPER_LAYERS, "smoothing_epochs": SMOOTH_EPOCHS,
                "tl_tolerance": TL_TOLERANCE, "wall_time_s": round(time.perf_counter() - started, 1)}
    summary = ("Train-set TL of the three hidden layers (the paper's L1–L3 are the store's "
               "layers.1–layers.3, the inputs of the 2nd–4th Linear), clipped at 0 and averaged "
               f"over {SMOOTH_EPOCHS} epochs as the paper's plots are; test accuracy from "
               "metrics.json. TL tolerances cover the reading error and one seed's spread.")
    return write_results(out, Results(experiment="E10", title="Grokking on modular addition",
                                      size=size, command=command, rows=rows, figures=[FIGURE],
                                      settings=settings, summary=summary))
