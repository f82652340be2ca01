"""Plain SGD on digits with every step saved, plus the batch log the FL residual needs.

A small GELU MLP (64 → 32 → 32 → 10) trained with plain SGD (no momentum, no weight decay,
constant lr) and ``CrossEntropyLoss(reduction="mean")`` on mini-batches of the 1797
scikit-learn 8×8 digits (pixels / 16). ``step_{t}.safetensors`` holds θ_t, the weights
*before* update t, for t = 0 ... steps; ``fl_batches.json`` records the probe rows of every
update (``{"loss": "ce", "lr": lr, "batches": {"t": [rows of update t → t+1]}}``) in the
order the batch was fed, so that ``W_{t+1} = W_t − lr·∇_W L(batch t)`` can be replayed
exactly from the files
(docs/concepts.md#the-feature-learning-equation-residual). ``probe.npz`` is the full training set the batch
indices point into; ``model_spec.json`` describes the network.

``--dtype float64`` builds the model in float64 (``model.double()`` after the usual float32
initialisation) and saves float64 weights and a float64 probe, so the replayed step agrees
to ~1e-12 rather than to float32 rounding.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from flq_audit.models import build_from_spec
from flq_audit.recipes._common import save_checkpoint, save_spec, shuffled_batches

SPEC = {
    "type": "mlp", "in_features": 64, "widths": [32, 32], "out_features": 10,
    "activation": "gelu", "bias": True,
}
DTYPES = {"float32": torch.float32, "float64": torch.float64}


def train(
    out_dir: str | Path,
    *,
    steps: int = 30,
    lr: float = 0.1,
    batch_size: int = 32,
    dtype: str = "float32",
    seed: int = 0,
) -> Path:
    """Run ``steps`` plain-SGD updates; write ``step_0`` ... ``step_{steps}``, the probe, the spec
    and ``fl_batches.json`` (one batch per update, i.e. per saved step except the last)."""
    from sklearn.datasets import load_digits

    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {list(DTYPES)}, got {dtype!r}")
    if steps < 1 or batch_size < 1:
        raise ValueError("steps and batch_size must be positive")
    torch_dtype = DTYPES[dtype]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    data = load_digits()
    inputs = (data.data / 16.0).astype(dtype)
    targets = data.target.astype(np.int64)
    if batch_size > len(inputs):
        raise ValueError(f"batch_size {batch_size} exceeds the {len(inputs)} training rows")
    x = torch.from_numpy(inputs)
    y = torch.from_numpy(targets)
    model = build_from_spec(SPEC).to(torch_dtype)
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.0, weight_decay=0.0)
    loss_fn = torch.nn.CrossEntropyLoss(reduction="mean")
    generator = torch.Generator().manual_seed(seed)
    batches = shuffled_batches(len(x), batch_size, generator)
    logged: dict[str, list[int]] = {}
    for step in range(steps + 1):
        save_checkpoint(model, out / f"step_{step}.safetensors")
        if step == steps:
            break
        idx = next(batches)
        logged[str(step)] = idx.tolist()
        optimizer.zero_grad()
        loss_fn(model(x[idx]), y[idx]).backward()
        optimizer.step()
    # Not _common.save_probe: it stores float32 inputs, and the float64 run needs float64 ones.
    np.savez(out / "probe.npz", inputs=inputs, targets=targets, num_classes=np.asarray(10, dtype=np.int64))
    save_spec(out / "model_spec.json", SPEC)
    log = {"loss": "ce", "lr": lr, "batches": logged}
    (out / "fl_batches.json").write_text(json.dumps(log) + "\n")
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", nargs="?", default="sgd-every-step-checkpoints")
    parser.add_argument("--steps", type=int, default=30, help="SGD updates (steps+1 checkpoints)")
    parser.add_argument("--lr", type=float, default=0.1, help="constant learning rate")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32",
                        help="weights, probe and training arithmetic")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(train(args.out_dir, steps=args.steps, lr=args.lr, batch_size=args.batch_size,
                dtype=args.dtype, seed=args.seed))


if __name__ == "__main__":
    main()
