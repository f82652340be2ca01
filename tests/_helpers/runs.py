"""Make small, real checkpoint folders for tests (real safetensors/pickle files)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from flq_audit.models import build_from_spec

SMALL_SPEC = {
    "type": "mlp", "in_features": 6, "widths": [8, 8], "out_features": 3,
    "activation": "gelu", "bias": True,
}


def small_probe(n: int = 40, seed: int = 0, in_features: int = 6, classes: int = 3):
    """Inputs (n, in_features) and integer labels in [0, classes)."""
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, in_features)).astype(np.float32), rng.integers(0, classes, n)


def make_run(
    root: Path,
    steps: tuple[int, ...] = (0, 10, 20),
    *,
    spec: dict | None = None,
    name: str = "step_{step}.safetensors",
    n_samples: int = 40,
    seed: int = 0,
) -> Path:
    """A folder with one safetensors checkpoint per step, ``model_spec.json`` and ``probe.npz``.

    Each step's weights are a fresh random init (seeded by step), so steps differ.
    """
    spec = spec or SMALL_SPEC
    root.mkdir(parents=True, exist_ok=True)
    for step in steps:
        torch.manual_seed(seed * 1000 + step)
        model = build_from_spec(spec)
        state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(root / name.format(step=step)))
    inputs, labels = small_probe(n_samples, seed, spec.get("in_features", 6),
                                 spec.get("out_features", 3))
    np.savez(root / "probe.npz", inputs=inputs, targets=labels, num_classes=np.int64(
        spec.get("out_features", 3)))
    (root / "model_spec.json").write_text(json.dumps(spec))
    return root


def state_for(step: int, spec: dict | None = None, seed: int = 0) -> dict[str, torch.Tensor]:
    """The state dict ``make_run`` writes for ``step``."""
    torch.manual_seed(seed * 1000 + step)
    return dict(build_from_spec(spec or SMALL_SPEC).state_dict())
