"""The paper's MLP shape (4 hidden GELU layers of width 128, biases) trained on digits.

SGD with momentum on the 1797 scikit-learn 8×8 digits; safetensors checkpoints on a log-ish
schedule (``step_0.safetensors`` ... ), plus ``probe.npz`` and ``model_spec.json`` beside them,
so that ``flq-audit OUT_DIR`` needs no other option.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from flq_audit.models import build_from_spec
from flq_audit.recipes._common import (
    TrainingProgress,
    log_schedule,
    save_checkpoint,
    save_probe,
    save_spec,
    shuffled_batches,
)

SPEC = {
    "type": "mlp", "in_features": 64, "widths": [128, 128, 128, 128], "out_features": 10,
    "activation": "gelu", "bias": True,
}


def train(
    out_dir: str | Path,
    *,
    total_steps: int = 3000,
    lr: float = 0.05,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    batch_size: int = 64,
    seed: int = 0,
    progress: TrainingProgress | None = None,
) -> Path:
    """Train and write checkpoints, the probe and the model spec into ``out_dir``.

    ``progress(step, total_steps, loss)`` is called after each optimizer step.
    """
    from sklearn.datasets import load_digits

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    data = load_digits()
    x = torch.tensor(data.data / 16.0, dtype=torch.float32)
    y = torch.tensor(data.target, dtype=torch.long)
    model = build_from_spec(SPEC)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum,
                                weight_decay=weight_decay)
    loss_fn = torch.nn.CrossEntropyLoss()
    schedule = set(log_schedule(total_steps))
    batches = shuffled_batches(len(x), batch_size, torch.Generator().manual_seed(seed))
    for step in range(total_steps + 1):
        if step in schedule:
            save_checkpoint(model, out / f"step_{step}.safetensors")
        if step == total_steps:
            break
        idx = next(batches)
        optimizer.zero_grad()
        loss = loss_fn(model(x[idx]), y[idx])
        loss.backward()
        optimizer.step()
        if progress is not None:
            progress(step + 1, total_steps, float(loss.detach()))
    save_probe(out / "probe.npz", x.numpy(), data.target.astype(np.int64), 10)
    save_spec(out / "model_spec.json", SPEC)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", nargs="?", default="digits-mlp-checkpoints")
    parser.add_argument("--steps", type=int, default=3000, help="optimizer steps")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--weight-decay", type=float, default=0.0, help="SGD weight decay")
    args = parser.parse_args(argv)
    print(train(args.out_dir, total_steps=args.steps, seed=args.seed,
                weight_decay=args.weight_decay))


if __name__ == "__main__":
    main()
