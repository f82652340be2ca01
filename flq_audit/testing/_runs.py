"""A small checkpoint folder for conformance suites (real safetensors, spec and probe)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

#: A two-hidden-layer MLP over 6 features and 3 classes.
SMALL_SPEC = {"type": "mlp", "in_features": 6, "widths": [8, 8], "out_features": 3,
              "activation": "gelu", "bias": True}


def small_run(root: Path, steps: tuple[int, ...] = (0, 10, 20), n_samples: int = 40) -> Path:
    """``root/step_N.safetensors`` (a fresh init per step), ``model_spec.json``, ``probe.npz``."""
    import torch
    from safetensors.torch import save_file

    from flq_audit.models import build_from_spec

    root.mkdir(parents=True, exist_ok=True)
    for step in steps:
        torch.manual_seed(step)
        state = build_from_spec(SMALL_SPEC).state_dict()
        save_file({k: v.detach().contiguous() for k, v in state.items()},
                  str(root / f"step_{step}.safetensors"))
    rng = np.random.default_rng(0)
    np.savez(root / "probe.npz", inputs=rng.normal(size=(n_samples, 6)).astype(np.float32),
             targets=rng.integers(0, 3, n_samples), num_classes=np.int64(3))
    (root / "model_spec.json").write_text(json.dumps(SMALL_SPEC))
    return root
