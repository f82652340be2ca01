"""Synthetic metrics Datasets shaped like real reports (layer names, step spacings)."""

from __future__ import annotations

import numpy as np
import xarray as xr

NEOX_KINDS = ("attention.query_key_value", "attention.dense", "mlp.dense_h_to_4h",
              "mlp.dense_4h_to_h")


def neox_layer_names(count: int) -> list[str]:
    """GPT-NeoX weight layer names, four per block: ``gpt_neox.layers.B.mlp.dense_4h_to_h``."""
    return [f"gpt_neox.layers.{i // 4}.{NEOX_KINDS[i % 4]}" for i in range(count)]


def log_steps(count: int) -> np.ndarray:
    """``count`` distinct steps from 0, roughly log-spaced (like Pythia's checkpoints)."""
    pool = np.unique(np.round(np.geomspace(1, 143_000, 20_000)).astype(np.int64))
    picks = pool[np.round(np.linspace(0, pool.size - 1, count - 1)).astype(int)]
    return np.concatenate([[0], picks])


def metrics_dataset(layers: list[str], steps: np.ndarray, eigen: int = 8) -> xr.Dataset:
    """TL, surrogate, alignment, t90 and Gram eigenvalues with plausible shapes and ranges."""
    rng = np.random.default_rng(0)
    n_steps, n_layers = len(steps), len(layers)
    progress = np.linspace(0.0, 1.0, n_steps)[:, None]
    depth = np.linspace(0.0, 1.0, n_layers)[None, :]
    tl = np.clip(0.2 + 0.75 * progress ** (1 + depth) + rng.normal(0, 0.01, (n_steps, n_layers)),
                 0, 1)
    eig = np.sort(rng.uniform(0.1, 50.0, (n_steps, n_layers, eigen)), axis=-1)[..., ::-1]
    return xr.Dataset(
        {
            "target_linearity": (("step", "layer"), tl),
            "surrogate": (("step", "layer"), 100.0 * tl),
            "alignment": (("step", "layer"), tl ** 2),
            "t90": (("layer",), np.linspace(steps[-1] * 0.2, steps[-1] * 0.9, n_layers)),
            "gram_top_eigenvalues": (("step", "layer", "eigen"), eig),
        },
        coords={"step": np.asarray(steps, dtype=np.int64),
                "layer": np.asarray(layers, dtype=object)},
    )
