"""The swiss roll's virtual trajectory (the paper's Fig. 1): audit, frames, table.

``python recipes/reproduce_swiss_roll.py OUT [--short | --full]`` trains
(:mod:`flq_audit.recipes.swiss_roll`), audits ``OUT/swiss_roll/`` into
``OUT/swiss_roll.zarr`` with the per-step input gradients (:class:`InputGradients`) and the
FL quantities (``--fl-loss mse --fl-lr 0.05 --fl-batches full``), and draws the frames from
the store alone: the points X − 700·Σ_{s≤k} ∇_X L_s (min–max renormalized) and the contours
of a Gaussian with covariance W₁ᵀW₁ + 1e-3·I, W₁ the first layer's stored weight Gram.

The paper's result is qualitative: the roll unrolls into a curve ordered by the target. Its
table measures that as the rank correlation |ρ| (Spearman) between t and each frame's first
principal coordinate, at the first and the last frame. One more row checks the store against
itself: the first layer's stored virtual covariance shift equals Σᵢ (x⁺x⁺ᵀ − xxᵀ) with
x⁺ = x − 0.05·∇_x L built from the stored input gradients (docs/concepts.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from flq_audit.recipes import swiss_roll
from flq_audit.recipes._reproduction import Comparison, Results
from flq_audit.recipes._sizes import command, finish, fresh_store, parse_size, size_name

SCALE, JITTER, FIRST = 700.0, 1e-3, "layers.0"
#: |ρ| a frame needs to count as "a curve ordered by the target".
ORDERED = 0.9


@dataclass(frozen=True)
class Size:
    steps: int
    frames: tuple[int, ...]


FULL = Size(steps=100, frames=(0, 10, 20, 30, 40, 50))
SHORT = Size(steps=20, frames=(0, 10, 20))


def audit(folder: Path, store: Path) -> None:
    from flq_audit import api
    from flq_audit.options import FLOptions

    api.audit(str(folder), out=str(fresh_store(store)), model=swiss_roll.MODEL,
              fl=FLOptions(loss="mse", lr=swiss_roll.LR, batches="full"),
              extensions=[swiss_roll.InputGradients()])


@dataclass(frozen=True)
class Stored:
    """What the frames need, read from the store."""

    inputs: np.ndarray  # (N, 2): the stored input of the first layer at step 0
    target: np.ndarray  # (N,)
    gradients: np.ndarray  # (steps, N, 2): ∇_X L_s
    grams: np.ndarray  # (steps, 2, 2): W₁ᵀW₁
    vcs: np.ndarray  # (steps, 2, 2): the stored fl_vcs of the first layer


def read_store(store: str | Path) -> Stored:
    from flq_audit.api import open_store

    ds = open_store(store, dask=False)
    d = int(ds["width"].sel(layer=FIRST))
    first = ds.sel(layer=FIRST)
    return Stored(
        inputs=first["activations"].isel(step=0).values[:, :d].astype(np.float64),
        target=ds["targets"].values[:, 0].astype(np.float64),
        gradients=ds[swiss_roll.GRADIENT].values[:, :, :d],
        grams=first["gram"].values[:, :d, :d].astype(np.float64),
        vcs=first["fl_vcs"].values[:, :d, :d])


def minmax(points: np.ndarray) -> np.ndarray:
    return (points - points.min(0)) / (points.max(0) - points.min(0))


def frame(stored: Stored, k: int) -> np.ndarray:
    """X − 700·Σ_{s≤k} ∇_X L_s, min–max renormalized per coordinate."""
    return minmax(stored.inputs - SCALE * stored.gradients[: k + 1].sum(axis=0))


def ordering(points: np.ndarray, target: np.ndarray) -> float:
    """|Spearman ρ| between ``target`` and the points' first principal coordinate."""
    from scipy.stats import spearmanr

    centred = points - points.mean(0)
    axis = np.linalg.svd(centred, full_matrices=False)[2][0]
    return float(abs(spearmanr(centred @ axis, target)[0]))


def vcs_mismatch(stored: Stored, lr: float = swiss_roll.LR) -> float:
    """Largest ‖stored VCS − Σ(x⁺x⁺ᵀ − xxᵀ)‖ / ‖stored VCS‖ over the steps that have one."""
    x, worst = stored.inputs, 0.0
    for grad, vcs in zip(stored.gradients, stored.vcs, strict=True):
        if not np.isfinite(vcs).all():
            continue
        moved = x - lr * grad
        virtual = moved.T @ moved - x.T @ x
        worst = max(worst, float(np.linalg.norm(vcs - virtual) / np.linalg.norm(vcs)))
    return worst


def rows(stored: Stored, size: Size) -> list[Comparison]:
    first, last = size.frames[0], size.frames[-1]
    rho_first = ordering(frame(stored, first), stored.target)
    rho_last = ordering(frame(stored, last), stored.target)
    if rho_last >= ORDERED and rho_last > rho_first:
        verdict, note = "reproduced", f"|ρ| ≥ {ORDERED} at the last frame, above the first's"
    elif rho_last > rho_first:
        verdict, note = "same direction", f"|ρ| rises but stays below {ORDERED}"
    else:
        verdict, note = "differs", "|ρ| does not rise"
    if last != FULL.frames[-1]:
        note += f"; short size: the paper's last frame is {FULL.frames[-1]}"
    mismatch = vcs_mismatch(stored)
    return [
        Comparison(f"|ρ(first principal coordinate, t)|, frame {first}", rho_first,
                   "a rolled-up spiral, not ordered by t", kind="qualitative",
                   verdict="not compared", note="the starting point"),
        Comparison(f"|ρ(first principal coordinate, t)|, frame {last}", rho_last,
                   "the roll unrolls into a curve ordered by t", kind="qualitative",
                   verdict=verdict, note=note),
        Comparison("first layer: stored VCS vs Σ(x⁺x⁺ᵀ − xxᵀ) from the stored ∇_X L "
                   "(max relative difference)", mismatch, 0.0, kind="text", tolerance=1e-6,
                   note="the virtual covariance of the input layer is the inputs' virtual "
                        "update (Def. 1)"),
    ]


def draw_figure(stored: Stored, size: Size, path: Path) -> Path:
    """Fig. 1: the frames coloured by t, with the contours of N(mean, W₁ᵀW₁ + 1e-3·I)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(size.frames), figsize=(2.6 * len(size.frames), 2.8),
                             squeeze=False)
    grid = np.linspace(-0.1, 1.1, 121)
    gx, gy = np.meshgrid(grid, grid)
    for ax, k in zip(axes[0], size.frames, strict=True):
        points = frame(stored, k)
        cov = stored.grams[k] + JITTER * np.eye(2)
        offset = np.stack([gx, gy], -1) - points.mean(0)
        density = np.exp(-0.5 * np.einsum("...i,ij,...j->...", offset, np.linalg.inv(cov), offset))
        ax.contour(gx, gy, density, levels=5, colors="0.5", linewidths=0.7)
        ax.scatter(points[:, 0], points[:, 1], c=stored.target, s=3, cmap="viridis")
        ax.set_title(f"step {k}", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_aspect("equal")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> Path:
    out, full = parse_size(argv, description=__doc__.splitlines()[0],
                           default_out="runs/swiss_roll", short="20 steps, frames 0, 10, 20",
                           full="the paper's 100 steps, frames 0 … 50")
    size = FULL if full else SHORT
    import torch

    torch.set_num_threads(1)  # a 32-wide MLP: extra threads only add overhead
    folder = swiss_roll.train(out / "swiss_roll", steps=size.steps)
    store = out / "swiss_roll.zarr"
    audit(folder, store)
    stored = read_store(store)
    figure = draw_figure(stored, size, out / "swiss_roll.png")
    results = Results(
        experiment="E1", title="Swiss roll: the virtual trajectory (Fig. 1)",
        size=size_name(full), command=command("reproduce_swiss_roll.py", full),
        rows=rows(stored, size),
        figures=[figure.name],
        settings={"data": "make_swiss_roll(1000, random_state=0), coordinates 0 and 2",
                  "model": "GELU MLP 2-32-32-1, no bias in layer 0", "seed": swiss_roll.SEED,
                  "lr": swiss_roll.LR, "steps": size.steps, "frames": list(size.frames),
                  "scale": SCALE, "jitter": JITTER},
        summary="Frames, Grams and gradients read from the store (input_gradient from the "
                "recipe's step extension, gram and fl_vcs from the audit).")
    return finish(out, results)
