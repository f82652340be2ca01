"""Pieces shared by the recipes that rerun one of the paper's sweeps (one run per value of a
hyperparameter, each trained by epochs, audited into a tagged store, then compared)."""

from __future__ import annotations

import argparse
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch


@dataclass(frozen=True)
class Size:
    """How much of the paper's sweep one invocation runs."""

    name: str  # "short" or "full"
    epochs: int
    checkpoint_every: int  # epochs between checkpoints
    values: tuple[float, ...]  # the swept hyperparameter


def checkpoint_epochs(epochs: int, every: int) -> list[int]:
    """Epoch 0, every ``every`` epochs, and the last.

    >>> checkpoint_epochs(7, 3)
    [0, 3, 6, 7]
    """
    if epochs < 0 or every < 1:
        raise ValueError("epochs must be >= 0 and the checkpoint interval >= 1")
    return sorted({*range(0, epochs + 1, every), epochs})


def epoch_batches(n: int, batch_size: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    """One epoch of mini-batch row indices: a fresh permutation, the last batch short (as a
    shuffling ``DataLoader`` gives them)."""
    yield from torch.randperm(n, generator=generator).split(batch_size)


def steps_per_epoch(n: int, batch_size: int) -> int:
    """
    >>> steps_per_epoch(2604, 32)
    82
    """
    return -(-n // batch_size)


@contextmanager
def one_thread() -> Iterator[None]:
    """Torch on one thread, restored afterwards: for networks this small extra threads only
    add overhead, and the machine stays free for other work."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@torch.no_grad()
def accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, split: str) -> dict[str, float]:
    """``{split}_accuracy`` and ``{split}_loss`` (cross-entropy) of ``model`` in eval mode."""
    model.eval()
    logits = model(x)
    return {f"{split}_accuracy": float((logits.argmax(dim=1) == y).float().mean()),
            f"{split}_loss": float(torch.nn.functional.cross_entropy(logits, y))}


def train_epochs(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, out: Path, *,
    train: tuple[torch.Tensor, torch.Tensor], test: tuple[torch.Tensor, torch.Tensor],
    epochs: int, saved: set[int], batch_size: int, seed: int,
) -> list[dict[str, float | int]]:
    """Cross-entropy training by epochs of shuffled mini-batches (seeded); at each epoch in
    ``saved`` (before that epoch's steps) ``step_N.safetensors`` (N = optimizer steps so far)
    and a row of train/test accuracy and loss. Returns those rows."""
    from flq_audit.recipes._common import save_checkpoint

    loss_fn = torch.nn.CrossEntropyLoss()
    generator = torch.Generator().manual_seed(seed)
    history: list[dict[str, float | int]] = []
    step = 0
    for epoch in range(epochs + 1):
        if epoch in saved:
            save_checkpoint(model, out / f"step_{step}.safetensors")
            history.append({"epoch": epoch, "step": step, **accuracy(model, *train, "train"),
                            **accuracy(model, *test, "test")})
        if epoch == epochs:
            break
        model.train()
        for rows in epoch_batches(len(train[0]), batch_size, generator):
            optimizer.zero_grad(set_to_none=True)
            loss_fn(model(train[0][rows]), train[1][rows]).backward()
            optimizer.step()
            step += 1
    return history


def audit_tagged(folder: Path, tags: dict[str, Any]) -> Path:
    """Audit a run folder into ``<folder>.zarr`` with ``tags``; the store (its metrics are
    computed by the comparison that follows)."""
    from flq_audit.api import audit
    from flq_audit.errors import UnauditedFilesWarning

    store = folder.parent / f"{folder.name}.zarr"
    with warnings.catch_warnings():  # metrics.json and test_probe.npz are not checkpoints
        warnings.simplefilter("ignore", UnauditedFilesWarning)
        audit(str(folder), out=str(store), tags=tags)
    return store


def run_sweep(out: Path, size: Size, tag: str, name: Callable[[float], str],
              train: Callable[[Path, float], Path], *, across_probes: bool = False) -> list[Path]:
    """For each value of ``size``: ``train(OUT_DIR/name(value), value)``, then audit the run
    into ``OUT_DIR/name(value).zarr`` tagged ``tag=value``; then compare the runs by ``tag``
    into ``OUT_DIR/compare.nc`` and the report folder ``OUT_DIR/compare/`` (``across_probes``
    when each run has probe labels of its own). The stores."""
    from flq_audit.report import compare

    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    stores = []
    for value in size.values:
        folder = train(out / name(value), value)
        stores.append(audit_tagged(folder, {tag: value}))
        print(f"{folder}: trained and audited ({time.perf_counter() - started:.0f} s)", flush=True)
    compare(stores, by=tag, out=out / "compare.nc", report=out / "compare",
            across_probes=across_probes)
    return stores


def run_main(argv: list[str] | None, description: str, sizes: tuple[Size, Size], script: str,
             run: Callable[[Path, Size, str], Path]) -> None:
    """The command line ``recipes/SCRIPT OUT_DIR [--short | --full]`` (``sizes`` = short,
    full; short by default): ``run(OUT_DIR, size, the command as run)``, then print the
    results file it returns."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("out_dir", type=Path)
    group = parser.add_mutually_exclusive_group()
    for size in sizes:
        group.add_argument(f"--{size.name}", dest="size", action="store_const", const=size,
                           help=f"{size.epochs} epochs, {len(size.values)} runs {list(size.values)}"
                                + (" (default)" if size is sizes[0] else ""))
    parser.set_defaults(size=sizes[0])
    args = parser.parse_args(argv)
    command = f"python recipes/{script} {args.out_dir} --{args.size.name}"
    print(f"results: {run(args.out_dir, args.size, command)}")
