"""The paper's random-labels experiment (Fig. 12) on scikit-learn's digits: one run per
label-noise fraction p.

The paper trains its MLP (3 hidden layers of width 256, GELU, biases; SGD lr 0.005 with
momentum 0.95 as in its code, batch 64) on CIFAR-10 for 200 epochs, after relabelling a
fraction p ∈ {0, 0.25, 0.5, 0.75, 0.9, 1.0} of the training and the test labels uniformly at
random, and measures the TL of each hidden layer on the (relabelled) training set. CIFAR-10
needs a download, so this recipe uses the 1797 8×8 digits (pixels / 16, 64 inputs), split
70/30 by ``train_test_split(test_size=0.3, random_state=0)`` (1257 train / 540 test). For a
fraction p, ``round(p·n)`` rows of each split, drawn by a seeded generator, get a label drawn
uniformly from the 10 classes (so about p/10 of them keep their true label, as in the paper's
code, which draws whom to relabel by a coin flip per row).

``python recipes/reproduce_random_labels.py OUT_DIR [--short | --full]`` trains each run into
``OUT_DIR/noise<p>/`` (``step_N.safetensors``, ``probe.npz`` = the relabelled training split,
``test_probe.npz``, ``model_spec.json``, ``metrics.json``), audits it into
``OUT_DIR/noise<p>.zarr`` tagged ``label_noise=p``, compares the runs (``OUT_DIR/compare.nc``,
``OUT_DIR/compare/``, by ``label_noise``), and writes the table and the figure
(:mod:`flq_audit.recipes.random_labels_results`).
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

NUM_CLASSES = 10
WIDTHS = (256, 256, 256)
BATCH_SIZE = 64
LR = 0.005
MOMENTUM = 0.95
NOISE_LEVELS = (0.0, 0.25, 0.5, 0.75, 0.9, 1.0)
LABEL_SEED = 0

SHORT = Size("short", epochs=4, checkpoint_every=2, values=(0.0, 1.0))
FULL = Size("full", epochs=600, checkpoint_every=20, values=NOISE_LEVELS)

SPEC = {"type": "mlp", "in_features": 64, "widths": list(WIDTHS), "out_features": NUM_CLASSES,
        "activation": "gelu", "bias": True}


def run_name(noise: float) -> str:
    """The folder (and store stem) of one run: ``noise0``, ``noise0.25``, ``noise1``."""
    return f"noise{noise:g}"


def relabel(labels: np.ndarray, fraction: float, generator: np.random.Generator) -> np.ndarray:
    """A copy of ``labels`` whose ``round(fraction·n)`` rows (drawn without replacement) get a
    label drawn uniformly from the classes.

    >>> relabel(np.arange(10) % 10, 0.0, np.random.default_rng(0)).tolist() == list(range(10))
    True
    """
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"the label-noise fraction must be in [0, 1], got {fraction}")
    out = labels.copy()
    rows = generator.choice(len(labels), size=round(fraction * len(labels)), replace=False)
    out[rows] = generator.integers(0, NUM_CLASSES, size=len(rows))
    return out


def noisy_digits(noise: float, seed: int = LABEL_SEED) -> dict[str, np.ndarray]:
    """The digits split 70/30, both splits relabelled at the fraction ``noise``; also the
    true labels (``y_train_true``, ``y_test_true``)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    x = (data.data / 16.0).astype(np.float32)
    x_train, x_test, y_train, y_test = train_test_split(x, data.target.astype(np.int64),
                                                        test_size=0.3, random_state=0)
    generator = np.random.default_rng(seed)
    return {"x_train": x_train, "x_test": x_test, "y_train_true": y_train, "y_test_true": y_test,
            "y_train": relabel(y_train, noise, generator), "y_test": relabel(y_test, noise, generator)}


def train_run(out_dir: str | Path, *, noise: float, epochs: int, checkpoint_every: int = 1,
              seed: int = 0) -> Path:
    """Train one run (on one thread) and write its checkpoints, probes, spec and
    ``metrics.json``."""
    saved = set(checkpoint_epochs(epochs, checkpoint_every))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with one_thread():
        return _train(out, noise=noise, epochs=epochs, saved=saved, seed=seed)


def _train(out: Path, *, noise: float, epochs: int, saved: set[int], seed: int) -> Path:
    started = time.perf_counter()
    data = noisy_digits(noise)
    x_train, y_train = torch.from_numpy(data["x_train"]), torch.from_numpy(data["y_train"])
    x_test, y_test = torch.from_numpy(data["x_test"]), torch.from_numpy(data["y_test"])
    torch.manual_seed(seed)
    model = build_from_spec(SPEC)
    optimizer = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)
    history = train_epochs(model, optimizer, out, train=(x_train, y_train), test=(x_test, y_test),
                           epochs=epochs, saved=saved, batch_size=BATCH_SIZE, seed=seed)
    save_probe(out / "probe.npz", data["x_train"], data["y_train"], NUM_CLASSES)
    save_probe(out / "test_probe.npz", data["x_test"], data["y_test"], NUM_CLASSES)
    save_spec(out / "model_spec.json", SPEC)
    kept = float((data["y_train"] == data["y_train_true"]).mean())
    config = {"label_noise": noise, "epochs": epochs, "checkpoint_epochs": sorted(saved),
              "lr": LR, "momentum": MOMENTUM, "batch_size": BATCH_SIZE, "seed": seed,
              "label_seed": LABEL_SEED, "train_size": len(x_train), "test_size": len(x_test),
              "steps_per_epoch": steps_per_epoch(len(x_train), BATCH_SIZE),
              "train_labels_unchanged": kept}
    metrics = {"config": config, "checkpoints": history,
               "wall_time_s": round(time.perf_counter() - started, 3)}
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return out


def settings(size: Size) -> dict[str, Any]:
    """How a run of ``size`` was set up (the results' ``settings``)."""
    return {
        "size": size.name, "epochs": size.epochs, "checkpoint_every_epochs": size.checkpoint_every,
        "label_noise": list(size.values), "dataset": "scikit-learn digits (8×8, pixels / 16)",
        "split": "train_test_split(test_size=0.3, random_state=0): 1257 train / 540 test",
        "relabelling": "round(p·n) rows of each split, a uniform label each (seeded)",
        "widths": list(WIDTHS), "activation": "gelu", "optimizer": "SGD", "lr": LR,
        "momentum": MOMENTUM, "batch_size": BATCH_SIZE, "seed": 0, "label_seed": LABEL_SEED,
        "tl_probe": "relabelled training split"}


def run_experiment(out_dir: str | Path, size: Size, command: str) -> Path:
    """Train, audit and compare every run of ``size``; write the results; return the JSON."""
    from flq_audit.recipes import random_labels_results as results

    out, started = Path(out_dir), time.perf_counter()
    stores = run_sweep(out, size, "label_noise", run_name, lambda folder, noise: train_run(
        folder, noise=noise, epochs=size.epochs, checkpoint_every=size.checkpoint_every),
        across_probes=True)  # each run's probe holds its own relabelled training labels
    return results.write(out, stores, size=size.name, command=command, settings=settings(size),
                         started=started)


def main(argv: list[str] | None = None) -> None:
    run_main(argv, __doc__.splitlines()[0], (SHORT, FULL), "reproduce_random_labels.py", run_experiment)


if __name__ == "__main__":
    main()
