"""The grokking reproduction's table and figures (the paper's Figs. 13 and 14).

The paper's L1, L2, L3 are the store's ``layers.1``..``layers.3`` (see
:data:`flq_audit.recipes._paper_curves.PAPER_LAYERS`). Curves are treated as the paper's
plots treat them: TL clipped at 0, then a trailing moving average over 20 epochs; a value
"at the end" is that average over the last 20 epochs.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from flq_audit.recipes._paper_curves import PAPER_LAYERS, Curves, load_curves
from flq_audit.recipes._reproduction import Comparison, Results, write_results

SMOOTH_EPOCHS = 20
EARLY_EPOCHS = 150  # the gap's early peak (before grokking) is looked for up to this epoch
TL_TOLERANCE = 0.05  # reading error (±0.02) plus the spread of one seed of a grokking run
FIGURE = "figures_13_14.png"
TIMING = "when a run memorizes and groks varies from seed to seed (one seed here, float32)"

# Fig. 13 at ≈ epoch 480, read off the figure: (L1, L2, L3) TL and the test accuracy.
PAPER_END_TL = {0.0: (0.19, 0.29, 0.55), 0.25: (0.29, 0.51, 0.60), 0.5: (0.24, 0.47, 0.53),
                0.75: (0.17, 0.32, 0.47)}
PAPER_TEST_ACCURACY = {0.0: 0.025, 0.25: 0.925, 0.5: 1.0, 0.75: 1.0}
PAPER_TEST_TOLERANCE = {0.0: 0.02, 0.25: 0.05, 0.5: 0.05, 0.75: 0.05}
PAPER_GROKKED_BY = {0.5: 300, 0.75: 350}  # first epoch with test accuracy ≈ 1
# Fig. 14: the early peak of the gap L3 − L2 and its minimum after that peak (λ = 0: flat).
PAPER_GAP_PEAK = {0.0: 0.26, 0.25: 0.20, 0.5: 0.17, 0.75: 0.14}
PAPER_GAP_MINIMUM = {0.0: 0.26, 0.25: 0.07, 0.5: 0.04, 0.75: 0.10}
NARROWED = 0.05  # a gap "narrows" when its minimum after the peak is this far below the peak


def smoothed(run: Curves, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The clipped, 20-epoch-averaged TL of the paper's layer ``k + 1``."""
    return run.smoothed(run.tl[:, k], SMOOTH_EPOCHS)


def end_tl(run: Curves) -> np.ndarray:
    return np.array([smoothed(run, k)[1][-1] for k in range(len(PAPER_LAYERS))])


def gap(run: Curves) -> tuple[np.ndarray, np.ndarray]:
    """The TL gap L3 − L2 of the smoothed, clipped curves (Fig. 14)."""
    epochs, l3 = smoothed(run, 2)
    return epochs, l3 - smoothed(run, 1)[1]


def _peak_index(run: Curves) -> int:
    """Where the gap is largest up to epoch 150 (the first smoothed value if none is that early)."""
    epochs, values = gap(run)
    early = epochs <= EARLY_EPOCHS
    return int(np.argmax(np.where(early, values, -np.inf))) if early.any() else 0


def gap_peak(run: Curves) -> float:
    return float(gap(run)[1][_peak_index(run)])


def gap_minimum(run: Curves) -> float:
    """The smallest gap from the early peak on (Fig. 14's narrowing)."""
    return float(gap(run)[1][_peak_index(run):].min())


def _label(weight_decay: float) -> str:
    return f"λ = {weight_decay:g}"


def _compared(quantity: str, toolkit: float, paper: float | None, tolerance: float | None,
              note: str = "") -> Comparison:
    """A numeric row; one for a λ the paper's figures do not show says so."""
    if paper is None:
        return Comparison(quantity, toolkit, None, verdict="not compared",
                          note="the paper's code runs this λ; its figures do not show it")
    return Comparison(quantity, toolkit, paper, tolerance=tolerance, note=note)


def run_rows(run: Curves) -> list[Comparison]:
    """Fig. 13's end values and Fig. 14's gap for one run, beside the paper's."""
    lam, wd = _label(run.value), run.value
    paper_tl = PAPER_END_TL.get(wd)
    end = end_tl(run)
    rows = [_compared(f"TL {name}, last 20 epochs, {lam}", float(end[k]),
                      None if paper_tl is None else paper_tl[k], TL_TOLERANCE)
            for k, name in enumerate(PAPER_LAYERS)]
    ordered = bool(end[0] < end[1] < end[2])
    shown = paper_tl is not None
    rows.append(Comparison(f"TL ordered by depth (L1 < L2 < L3) at the end, {lam}",
                           "yes" if ordered else "no", "yes" if shown else None, kind="qualitative",
                           verdict=("reproduced" if ordered else "differs") if shown else "not compared",
                           note="Fig. 13"))
    rows.append(_compared(f"test accuracy at the end, {lam}", float(run.test_accuracy[-1]),
                          PAPER_TEST_ACCURACY.get(wd), PAPER_TEST_TOLERANCE.get(wd), note=TIMING))
    if wd in PAPER_GROKKED_BY:
        rows.append(_compared(f"first epoch with test accuracy ≥ 0.95, {lam}",
                              run.first_epoch(run.test_accuracy, 0.95), float(PAPER_GROKKED_BY[wd]),
                              50.0, note=f"the paper's test accuracy is ≈ 1 by then; {TIMING}"))
    trained = run.first_epoch(run.train_accuracy, 0.99)
    rows.append(Comparison(f"first epoch with train accuracy ≥ 0.99, {lam}", trained,
                           "≈ 20–100" if shown else None,
                           verdict=("reproduced" if trained <= 100 else "differs") if shown
                           else "not compared", note=TIMING if shown else ""))
    rows.append(_compared(f"TL gap L3 − L2, early peak (epochs ≤ {EARLY_EPOCHS}), {lam}",
                          gap_peak(run), PAPER_GAP_PEAK.get(wd), TL_TOLERANCE, note="Fig. 14"))
    rows.append(_compared(f"TL gap L3 − L2, minimum after the early peak, {lam}", gap_minimum(run),
                          PAPER_GAP_MINIMUM.get(wd), TL_TOLERANCE, note="Fig. 14"))
    paper_gap = None if paper_tl is None else round(paper_tl[2] - paper_tl[1], 2)
    rows.append(_compared(f"TL gap L3 − L2, last 20 epochs, {lam}", float(gap(run)[1][-1]),
                          paper_gap, TL_TOLERANCE,
                          note="L3 − L2 of the Fig. 13 read-offs (Fig. 14 runs longer)"))
    return rows


def narrowing_row(runs: Sequence[Curves]) -> Comparison:
    """Fig. 14's claim: the gap narrows (its minimum after the early peak lies well below the
    peak) in the runs that generalize, and stays at its peak in the run that does not."""
    grokked = [r for r in runs if r.test_accuracy[-1] >= 0.9]
    memorized = [r for r in runs if r.test_accuracy[-1] < 0.1]
    narrowed = [r for r in grokked if gap_minimum(r) < gap_peak(r) - NARROWED]
    stayed = [r for r in memorized if gap_minimum(r) >= gap_peak(r) - NARROWED]
    text = (f"narrows in {len(narrowed)} of {len(grokked)} runs that generalize; "
            f"stays within {NARROWED} of its peak in {len(stayed)} of {len(memorized)} that do not")
    holds = (bool(grokked) and bool(memorized) and len(narrowed) == len(grokked)
             and len(stayed) == len(memorized))
    return Comparison("TL gap L3 − L2 narrows with grokking, stays wide without it", text,
                      "narrows for λ = 0.25, 0.5, 0.75; flat for λ = 0", kind="qualitative",
                      verdict="reproduced" if holds else "differs",
                      note="" if holds else "needs runs that generalize and one that does not")


def draw(runs: Sequence[Curves], path: Path) -> Path:
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
            line, = top.plot(*smoothed(run, k), label=f"TL {name}")
            top.plot(run.epochs, np.clip(run.tl[:, k], 0, None), ".", color=line.get_color(),
                     alpha=0.3, markersize=3)
        top.plot(run.epochs, run.train_accuracy, ":", color="grey", label="train acc")
        top.plot(run.epochs, run.test_accuracy, "--", color="black", label="test acc")
        top.set(title=f"Fig. 13, {_label(run.value)}", ylim=(0, 1.02))
        epochs, values = gap(run)
        bottom.plot(epochs, values, color="tab:red", label="TL L3 − L2")
        bottom.set(title=f"Fig. 14, {_label(run.value)}", xlabel="epoch")
        twin = bottom.twinx()
        twin.plot(run.epochs, 1.0 - run.test_accuracy, "--", color="black", label="gen. error")
        twin.set(ylim=(0, 1.02))
        if col == 0:
            top.legend(fontsize=7, loc="center right")
            bottom.set_ylabel("TL gap L3 − L2 (train set)")
            bottom.legend(fontsize=7, loc="lower right")
            twin.legend(fontsize=7, loc="center right")
        if col == len(runs) - 1:
            twin.set_ylabel("generalization error (1 − test acc)")
    fig.savefig(path, dpi=110)
    return path


def write(out: Path, stores: Sequence[Path], *, size: str, command: str, settings: dict[str, Any],
          started: float) -> Path:
    """The rows, the figure and ``results.json`` / ``results.md`` of one recipe run."""
    runs = sorted((load_curves(s, "weight_decay") for s in stores), key=lambda r: r.value)
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
