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
``weight_decay=λ``, compares the runs, and writes the table and figures
(:mod:`flq_audit.recipes.grokking_paper_results`).
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from flq_audit.errors import UnauditedFilesWarning
from flq_audit.models import build_from_spec
from flq_audit.recipes._common import save_checkpoint, save_probe, save_spec
from flq_audit.recipes.grokking_mlp import BETAS, modular_addition

P = 61
WIDTHS = (256, 256, 256)
BATCH_SIZE = 32
LR = 1e-3
TEST_FRACTION = 0.3
SPLIT_STATE = 0
WEIGHT_DECAYS = (0.0, 0.25, 0.5, 0.75, 1.0)


@dataclass(frozen=True)
class Size:
    """How much of the paper's experiment one invocation runs."""

    name: str
    epochs: int
    checkpoint_every: int  # epochs between checkpoints
    weight_decays: tuple[float, ...]


SHORT = Size("short", epochs=4, checkpoint_every=2, weight_decays=(0.0, 0.5))
FULL = Size("full", epochs=500, checkpoint_every=10, weight_decays=WEIGHT_DECAYS)


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


def epoch_batches(n: int, batch_size: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    """One epoch of mini-batch row indices: a fresh permutation, the last batch short."""
    yield from torch.randperm(n, generator=generator).split(batch_size)


def checkpoint_epochs(epochs: int, every: int) -> list[int]:
    """Epoch 0, every ``every`` epochs, and the last.

    >>> checkpoint_epochs(7, 3)
    [0, 3, 6, 7]
    """
    return sorted({*range(0, epochs + 1, every), epochs})


def train_run(
    out_dir: str | Path,
    *,
    weight_decay: float,
    epochs: int,
    checkpoint_every: int = 1,
    seed: int = 0,
    p: int = P,
) -> Path:
    """Train one run and write its checkpoints, probes, spec and ``metrics.json``.

    Single-threaded (restored afterwards): for a network this small extra threads only add
    overhead, and the machine stays free for other work.
    """
    if epochs < 0 or checkpoint_every < 1:
        raise ValueError("epochs must be >= 0 and checkpoint_every >= 1")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _train(out, weight_decay=weight_decay, epochs=epochs,
                      checkpoint_every=checkpoint_every, seed=seed, p=p)
    finally:
        torch.set_num_threads(threads)


def _train(out: Path, *, weight_decay: float, epochs: int, checkpoint_every: int, seed: int,
           p: int) -> Path:
    started = time.perf_counter()
    inputs, targets, train_rows, test_rows = paper_split(p)
    x_train, y_train = torch.from_numpy(inputs[train_rows]), torch.from_numpy(targets[train_rows])
    x_test, y_test = torch.from_numpy(inputs[test_rows]), torch.from_numpy(targets[test_rows])
    spec = model_spec(p)
    torch.manual_seed(seed)
    model = build_from_spec(spec)
    optimizer = _adamw(model, weight_decay)
    loss_fn = torch.nn.CrossEntropyLoss()
    generator = torch.Generator().manual_seed(seed)
    saved = set(checkpoint_epochs(epochs, checkpoint_every))
    history: list[dict[str, float | int]] = []
    step = 0
    for epoch in range(epochs + 1):
        if epoch in saved:
            save_checkpoint(model, out / f"step_{step}.safetensors")
            history.append({"epoch": epoch, "step": step,
                            **_accuracy(model, x_train, y_train, "train"),
                            **_accuracy(model, x_test, y_test, "test")})
        if epoch == epochs:
            break
        model.train()
        for rows in epoch_batches(len(x_train), BATCH_SIZE, generator):
            optimizer.zero_grad(set_to_none=True)
            loss_fn(model(x_train[rows]), y_train[rows]).backward()
            optimizer.step()
            step += 1
    save_probe(out / "probe.npz", inputs[train_rows], targets[train_rows], p)
    save_probe(out / "test_probe.npz", inputs[test_rows], targets[test_rows], p)
    save_spec(out / "model_spec.json", spec)
    config = {"p": p, "epochs": epochs, "checkpoint_every_epochs": checkpoint_every,
              "weight_decay": weight_decay, "lr": LR, "betas": list(BETAS),
              "batch_size": BATCH_SIZE, "seed": seed, "train_size": len(train_rows),
              "test_size": len(test_rows), "steps_per_epoch": -(-len(train_rows) // BATCH_SIZE)}
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


@torch.no_grad()
def _accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, split: str) -> dict[str, float]:
    model.eval()
    logits = model(x)
    return {f"{split}_accuracy": float((logits.argmax(dim=1) == y).float().mean()),
            f"{split}_loss": float(torch.nn.functional.cross_entropy(logits, y))}


def audit_run(folder: Path, weight_decay: float) -> Path:
    """Audit one run folder into ``<folder>.zarr`` tagged ``weight_decay=λ``; its TL."""
    from flq_audit.api import audit, compute_metrics

    store = folder.parent / f"{folder.name}.zarr"
    with warnings.catch_warnings():  # metrics.json and test_probe.npz are not checkpoints
        warnings.simplefilter("ignore", UnauditedFilesWarning)
        audit(str(folder), out=str(store), tags={"weight_decay": weight_decay})
    compute_metrics(store, metrics=("tl",))
    return store


def run_experiment(out_dir: str | Path, size: Size, *, command: str,
                   weight_decays: Sequence[float] | None = None) -> Path:
    """Train, audit and compare every run of ``size``; write the results; return the JSON."""
    from flq_audit.recipes import grokking_paper_results as results

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    stores = []
    for wd in weight_decays if weight_decays is not None else size.weight_decays:
        folder = train_run(out / run_name(wd), weight_decay=wd, epochs=size.epochs,
                           checkpoint_every=size.checkpoint_every)
        stores.append(audit_run(folder, wd))
        print(f"{folder}: trained and audited ({time.perf_counter() - started:.0f} s)", flush=True)
    settings = {**asdict(size), "weight_decays": [float(w) for w in
                                                   (weight_decays or size.weight_decays)],
                "p": P, "widths": list(WIDTHS), "activation": "relu", "batch_size": BATCH_SIZE,
                "lr": LR, "betas": list(BETAS), "split": "train_test_split(test_size=0.3, "
                "random_state=0): 2604 train / 1117 test", "dtype": "float32",
                "tl_probe": "training split", "seed": 0}
    return results.write(out, stores, size=size.name, command=command, settings=settings,
                         started=started)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--short", dest="size", action="store_const", const="short",
                       help=f"{SHORT.epochs} epochs, λ ∈ {SHORT.weight_decays} (default)")
    group.add_argument("--full", dest="size", action="store_const", const="full",
                       help=f"{FULL.epochs} epochs, λ ∈ {FULL.weight_decays}")
    parser.set_defaults(size="short")
    args = parser.parse_args(argv)
    size = FULL if args.size == "full" else SHORT
    command = f"python recipes/reproduce_grokking.py {args.out_dir} --{size.name}"
    path = run_experiment(args.out_dir, size, command=command)
    print(f"results: {path}")


if __name__ == "__main__":
    main()
