"""The random-labels reproduction's table and figure (the paper's Fig. 12).

The paper's values are CIFAR-10 read-offs at epoch 200; this recipe trains on digits, so a
number is not expected to match, and the rows that matter are the trends over p: the
last-layer TL falls as p grows and levels off for p ≥ 0.75, test accuracy falls towards
chance, and for p ≥ 0.75 the middle layers' TL starts rising late (an S-shaped curve). The
paper's L1..L3 are the store's ``layers.1``..``layers.3``
(:data:`flq_audit.recipes._paper_curves.PAPER_LAYERS`); values "at the end" are those of the
last checkpoint, TL clipped at 0 as the paper's plots clip it.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from flq_audit.recipes._paper_curves import PAPER_LAYERS, Curves, load_curves
from flq_audit.recipes._reproduction import Comparison, Results, write_results

FIGURE = "figure_12.png"
CHANCE = 0.1  # ten classes
TOLERANCE = 0.03  # the reading error of the figure's values
OTHER_DATA = "other dataset: digits (1257 training images) instead of CIFAR-10 (50 000)"
MEMORIZED = ("other dataset: 1257 digits are fitted at every p in 600 epochs, where CIFAR-10's "
             "50 000 images are not in 200")

# Fig. 12 at epoch 200 (CIFAR-10), read off the figure: TL L1, L2, L3, train and test accuracy.
PAPER = {0.0: (0.24, 0.31, 0.43, 0.87, 0.50), 0.25: (0.14, 0.19, 0.36, 0.81, 0.30),
         0.5: (0.07, 0.11, 0.28, 0.74, 0.18), 0.75: (0.035, 0.10, 0.25, 0.71, 0.12),
         0.9: (0.03, 0.16, 0.25, 0.72, 0.10), 1.0: (0.045, 0.155, 0.23, 0.71, 0.09)}
ONSET_FRACTION = 0.5  # the onset of a rise: the first epoch past half of it


def end_tl(run: Curves) -> np.ndarray:
    """TL of L1..L3 at the last checkpoint, clipped at 0."""
    return np.clip(run.tl[-1], 0, None)


def onset(run: Curves, k: int) -> float:
    """The first epoch at which layer ``k + 1``'s TL has made half of its rise from epoch 0
    to its maximum (NaN when it never rises)."""
    tl = np.clip(run.tl[:, k], 0, None)
    rise = tl.max() - tl[0]
    return run.first_epoch(tl, tl[0] + ONSET_FRACTION * rise) if rise > 0 else float("nan")


def run_rows(run: Curves) -> list[Comparison]:
    """Last-layer TL and train/test accuracy at one p, beside the paper's CIFAR-10 values."""
    paper = PAPER.get(run.value)
    label = f"p = {run.value:g}"
    values = (float(end_tl(run)[2]), float(run.train_accuracy[-1]), float(run.test_accuracy[-1]))
    names = ("last-layer TL (L3)", "train accuracy", "test accuracy")
    notes = (OTHER_DATA, MEMORIZED, OTHER_DATA)
    return [Comparison(f"{name} at the end, {label}", value, None if paper is None else paper[2 + i],
                       tolerance=TOLERANCE, note=note)
            for i, (name, value, note) in enumerate(zip(names, values, notes, strict=True))]


def _by_p(runs: Sequence[Curves], value: Any) -> dict[float, float]:
    return {r.value: float(value(r)) for r in runs}


def _text(values: dict[float, float]) -> str:
    return ", ".join(f"{v:.2f} (p = {p:g})" for p, v in values.items())


def trend_rows(runs: Sequence[Curves]) -> list[Comparison]:
    """The paper's claims over p, checked on the runs that were made."""
    last = _by_p(runs, lambda r: end_tl(r)[2])
    test = _by_p(runs, lambda r: r.test_accuracy[-1])
    train = _by_p(runs, lambda r: r.train_accuracy[-1])
    ps = sorted(last)
    rows = [_falls("last-layer TL falls as p grows", last, ps, "0.45 (p = 0) → 0.3 (p = 0.5)"),
            _falls("test accuracy falls as p grows", test, ps, "0.5 → 0.3 → 0.2 → about 0.1"),
            _falls("train accuracy falls as p grows", train, ps, "0.85 (p = 0) → 0.75 (p = 0.5)",
                   note=MEMORIZED)]
    if max(ps) == 1.0:
        rows.append(Comparison("test accuracy at p = 1 (chance is 0.1)", test[1.0], CHANCE, kind="text",
                               tolerance=0.05, note="labels independent of the images"))
    high = [p for p in ps if p >= 0.75]
    if len(high) >= 2:
        spread = max(last[p] for p in high) - min(last[p] for p in high)
        rows.append(Comparison("last-layer TL levels off for p ≥ 0.75 (max − min over those p)",
                               spread, "about 0.25 for every p ≥ 0.75", kind="text",
                               verdict="same direction" if spread <= 0.05 else "differs",
                               note=f"values {_text({p: last[p] for p in high})}; {OTHER_DATA}"))
    if 0.0 in ps and high:
        clean = onset(next(r for r in runs if r.value == 0.0), 1)
        onsets = [onset(r, 1) for r in runs if r.value in high]
        late = float(np.mean([o for o in onsets if np.isfinite(o)])) if np.isfinite(onsets).any() \
            else float("nan")
        later = bool(np.isfinite(late) and np.isfinite(clean) and late > clean)
        rows.append(Comparison("L2 TL rises late for p ≥ 0.75 (S-shape): onset epoch, mean over "
                               "p ≥ 0.75, vs p = 0", f"{late:.0f} vs {clean:.0f}",
                               "≈ 40–50 for p ≥ 0.75", kind="text",
                               verdict="same direction" if later else "differs",
                               note="onset: first epoch past half of the rise from epoch 0 to "
                                    f"the maximum; {OTHER_DATA}"))
    return rows


def _falls(quantity: str, values: dict[float, float], ps: list[float], paper: str,
           note: str = OTHER_DATA) -> Comparison:
    """``same direction`` when the value at the largest p is below the value at p = 0."""
    falls = values[ps[-1]] < values[ps[0]]
    return Comparison(quantity, _text(values), paper, kind="text",
                      verdict="same direction" if falls else "differs", note=note)


def draw(runs: Sequence[Curves], path: Path) -> Path:
    """Fig. 12: TL per layer and accuracy vs epoch, one panel per p; then the end values vs p
    beside the paper's CIFAR-10 read-offs."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(13, 6.4), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, 4).ravel()
    for ax, run in zip(axes, runs, strict=False):
        for k, name in enumerate(PAPER_LAYERS):
            ax.plot(run.epochs, np.clip(run.tl[:, k], 0, None), label=f"TL {name}")
        ax.plot(run.epochs, run.train_accuracy, ":", color="grey", label="train acc")
        ax.plot(run.epochs, run.test_accuracy, "--", color="black", label="test acc")
        ax.set(title=f"p = {run.value:g}", ylim=(0, 1.02), xlabel="epoch")
    axes[0].legend(fontsize=7)
    for ax in axes[len(runs):-2]:  # a sweep of fewer than six runs
        ax.set_visible(False)
    ps = [r.value for r in runs]
    tl_ax, acc_ax = axes[-2], axes[-1]
    tl_ax.plot(ps, [end_tl(r)[2] for r in runs], "o-", label="TL L3, digits (flq-audit)")
    acc_ax.plot(ps, [r.train_accuracy[-1] for r in runs], "o:", color="grey", label="train, digits")
    acc_ax.plot(ps, [r.test_accuracy[-1] for r in runs], "o--", color="black", label="test, digits")
    shown = sorted(PAPER)
    tl_ax.plot(shown, [PAPER[p][2] for p in shown], "s-", color="tab:green", alpha=0.6,
               label="TL L3, CIFAR-10 (paper)")
    acc_ax.plot(shown, [PAPER[p][3] for p in shown], "s:", color="tab:orange", label="train, CIFAR-10")
    acc_ax.plot(shown, [PAPER[p][4] for p in shown], "s--", color="tab:red", label="test, CIFAR-10")
    acc_ax.axhline(CHANCE, color="grey", linewidth=0.6)
    for ax, title in ((tl_ax, "last-layer TL at the end"), (acc_ax, "accuracy at the end")):
        ax.set(title=title, xlabel="label noise p", ylim=(0, 1.02))
        ax.legend(fontsize=7)
    fig.savefig(path, dpi=110)
    return path


def write(out: Path, stores: Sequence[Path], *, size: str, command: str, settings: dict[str, Any],
          started: float) -> Path:
    """The rows, the figure and ``results.json`` / ``results.md`` of one recipe run."""
    runs = sorted((load_curves(s, "label_noise") for s in stores), key=lambda r: r.value)
    draw(runs, out / FIGURE)
    rows = [row for run in runs for row in run_rows(run)] + trend_rows(runs)
    floor = _chance_floor(stores[0])
    settings = {**settings, "paper_layers": PAPER_LAYERS, "tolerance": TOLERANCE,
                "wall_time_s": round(time.perf_counter() - started, 1)}
    summary = ("Train-set TL (against the relabelled training labels) of the three hidden "
               "layers at the last checkpoint; the paper's L1–L3 are the store's "
               "layers.1–layers.3. On digits the chance floor of the last layer's TL (rank/N) "
               f"is {floor:.2f}, against 256/50 000 on CIFAR-10: TL values sit higher here.")
    return write_results(out, Results(experiment="E9", title="Random labels", size=size,
                                      command=command, rows=rows, figures=[FIGURE],
                                      settings=settings, summary=summary))


def _chance_floor(store: Path) -> float:
    """The last layer's TL chance floor (rank / N) at the last step of a store."""
    from flq_audit.api import compute_metrics

    ds = compute_metrics(store, metrics=("tl",))
    return float(ds["target_linearity_chance_floor"].sel(layer=PAPER_LAYERS["L3"]).values[-1])

