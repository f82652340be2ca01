"""The paper's grokking experiment (Figs. 13 and 14): addition mod 61, one run per weight decay.

Set-up of the paper's Section on grokking and its reference code: all 61² pairs (a, b),
input = one-hot(a) ‖ one-hot(b) (122 values), label (a + b) mod 61; a 70/30 split by
scikit-learn's ``train_test_split(test_size=0.3, random_state=0)`` (2604 train / 1117 test
pairs); an MLP 122 → 256 → 256 → 256 → 61 with ReLU and biases; AdamW (lr 1e-3, betas
(0.9, 0.98), weight decay λ), batch 32 reshuffled every epoch (the last, short batch kept:
82 steps per epoch), λ ∈ {0, 0.25, 0.5, 0.75, 1.0}, 500 epochs; the TL is measured on the
training set. Departures: float32 instead of float64, and a checkpoint every few epochs
instead of every epoch (the sizes below say how many).

``python recipes/reproduce_grokking.py OUT_DIR [--short | --full]`` trains each run into
``OUT_DIR/wd<λ>/`` (``step_N.safetensors`` with N the optimizer step, ``probe.npz`` = the
training split, ``test_probe.npz``, ``model_spec.json``, ``metrics.json`` with train/test
accuracy per checkpoint), audits it into ``OUT_DIR/wd<λ>.zarr`` tagged
``weight_decay=λ``, compares the runs (``OUT_DIR/compare.nc`` and the report folder
``OUT_DIR/compare/``, by ``weight_decay``), and writes the table and figures
(:mod:`flq_audit.recipes.grokking_paper_results`).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from flq_audit.models import build_from_spec
from flq_audit.recipes._common import save_probe, save_spec
from flq_audit.recipes._paper_runs import (
    Size,
    checkpoint_epochs,
    one_thread,
    run_main,
    run_sweep,
    steps_per_epoch,
    train_epochs,
)
from flq_audit.recipes.grokking_mlp import BETAS, modular_addition

P = 61
WIDTHS = (256, 256, 256)
BATCH_SIZE = 32
LR = 1e-3
TEST_FRACTION = 0.3
SPLIT_STATE = 0
WEIGHT_DECAYS = (0.0, 0.25, 0.5, 0.75, 1.0)

SHORT = Size("short", epochs=4, checkpoint_every=2, values=(0.0, 0.5))
FULL = Size("full", epochs=500, checkpoint_every=10, values=WEIGHT_DECAYS)


def model_spec(p: int = P) -> dict[str, Any]:
    return {"type": "mlp", "in_features": 2 * p, "widths": list(WIDTHS), "out_features": p,
            "activation": "relu", "bias": True}


def paper_split(p: int = P) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(inputs, targets, train_rows, test_rows)``: every pair, split as the paper's code does
    (``train_test_split(..., test_size=0.3, random_state=0)`` over the pairs in row order
    ``a·p + b``).

    >>> _, _, train, test = paper_split()
    >>> len(train), len(test)
    (2604, 1117)
    """
    from sklearn.model_selection import train_test_split

    inputs, targets, _, _ = modular_addition(p)
    train_rows, test_rows = train_test_split(np.arange(p * p), test_size=TEST_FRACTION,
                                             random_state=SPLIT_STATE)
    return inputs, targets, np.asarray(train_rows), np.asarray(test_rows)


def run_name(weight_decay: float) -> str:
    """The folder (and store stem) of one run: ``wd0``, ``wd0.25``, ``wd1``."""
    return f"wd{weight_decay:g}"


def train_run(
    out_dir: str | Path,
    *,
    weight_decay: float,
    epochs: int,
    checkpoint_every: int = 1,
    seed: int = 0,
    p: int = P,
) -> Path:
    """Train one run (on one thread) and write its checkpoints, probes, spec and
    ``metrics.json``."""
    saved = set(checkpoint_epochs(epochs, checkpoint_every))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with one_thread():
        return _train(out, weight_decay=weight_decay, epochs=epochs, saved=saved, seed=seed, p=p)


def _train(out: Path, *, weight_decay: float, epochs: int, saved: set[int], seed: int,
           p: int) -> Path:
    started = time.perf_counter()
    inputs, targets, train_rows, test_rows = paper_split(p)
    x_train, y_train = torch.from_numpy(inputs[train_rows]), torch.from_numpy(targets[train_rows])
    x_test, y_test = torch.from_numpy(inputs[test_rows]), torch.from_numpy(targets[test_rows])
    spec = model_spec(p)
    torch.manual_seed(seed)
    model = build_from_spec(spec)
    optimizer = _adamw(model, weight_decay)
    history = train_epochs(model, optimizer, out, train=(x_train, y_train), test=(x_test, y_test),
                           epochs=epochs, saved=saved, batch_size=BATCH_SIZE, seed=seed)
    save_probe(out / "probe.npz", inputs[train_rows], targets[train_rows], p)
    save_probe(out / "test_probe.npz", inputs[test_rows], targets[test_rows], p)
    save_spec(out / "model_spec.json", spec)
    config = {"p": p, "epochs": epochs, "checkpoint_epochs": sorted(saved),
              "weight_decay": weight_decay, "lr": LR, "betas": list(BETAS),
              "batch_size": BATCH_SIZE, "seed": seed, "train_size": len(train_rows),
              "test_size": len(test_rows),
              "steps_per_epoch": steps_per_epoch(len(train_rows), BATCH_SIZE)}
    metrics = {"config": config, "checkpoints": history,
               "wall_time_s": round(time.perf_counter() - started, 3)}
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return out


def _adamw(model: torch.nn.Module, weight_decay: float) -> torch.optim.Optimizer:
    """The paper's AdamW; the fused CPU kernel where this torch has one (twice as fast here)."""
    try:
        return torch.optim.AdamW(model.parameters(), lr=LR, betas=BETAS,
                                 weight_decay=weight_decay, fused=True)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.AdamW(model.parameters(), lr=LR, betas=BETAS,
                                 weight_decay=weight_decay)


def settings(size: Size) -> dict[str, Any]:
    """How a run of ``size`` was set up (the results' ``settings``)."""
    return {"size": size.name, "epochs": size.epochs, "checkpoint_every_epochs": size.checkpoint_every,
            "weight_decays": list(size.values), "p": P, "widths": list(WIDTHS), "activation": "relu",
            "batch_size": BATCH_SIZE, "lr": LR, "betas": list(BETAS),
            "split": "train_test_split(test_size=0.3, random_state=0): 2604 train / 1117 test",
            "dtype": "float32", "tl_probe": "training split", "seed": 0}


def run_experiment(out_dir: str | Path, size: Size, command: str) -> Path:
    """Train, audit and compare every run of ``size``; write the results; return the JSON."""
    from flq_audit.recipes import grokking_paper_results as results

    out, started = Path(out_dir), time.perf_counter()
    stores = run_sweep(out, size, "weight_decay", run_name, lambda folder, wd: train_run(
        folder, weight_decay=wd, epochs=size.epochs, checkpoint_every=size.checkpoint_every))
    return results.write(out, stores, size=size.name, command=command, settings=settings(size),
                         started=started)


def main(argv: list[str] | None = None) -> None:
    run_main(argv, __doc__.splitlines()[0], (SHORT, FULL), "reproduce_grokking.py", run_experiment)


if __name__ == "__main__":
    main()
