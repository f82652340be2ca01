"""Random probe inputs and a replay gathered whole, for the capture tests."""

from __future__ import annotations

import numpy as np

from flq_audit.capture import replay


def random_inputs(n: int, features: int, seed: int = 0) -> np.ndarray:
    """``n`` float32 samples of ``features`` standard-normal values."""
    return np.random.default_rng(seed).normal(size=(n, features)).astype(np.float32)


def collect(model, layers, inputs, batch_size):
    """The replay's batches, and each layer's rows concatenated over them."""
    batches = list(replay(model, layers, inputs, batch_size=batch_size, device="cpu"))
    merged = {name: np.concatenate([b[2][name] for b in batches]) for name in layers}
    return batches, merged
