"""Gram metrics of two audits of the same checkpoints stored in different ``--grams`` forms.

    python benchmarks/compare_gram_forms.py FULL.zarr COMPACT.zarr [--out results.json]

Computes the ``gram`` and ``surrogate`` groups of both stores (each from its own form) and
prints, per output, the largest difference relative to the largest magnitude of that output
in the first store, and the wall time of each. With ``--gram-dtype float32`` stores the
dense Gram is rounded to float32 while a factor keeps the float32 weight itself, so the two
agree to float32's precision (~1e-7); in float64 they agree to 1e-12
(tests/integration/test_compact_grams.py).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from _results import write_result

from flq_audit import api

GROUPS = ["gram", "surrogate"]


def _metrics(store: Path) -> tuple[dict[str, np.ndarray], float]:
    start = time.perf_counter()
    ds = api.compute_metrics(store, metrics=GROUPS, recompute=True)
    elapsed = time.perf_counter() - start
    return {str(name): np.asarray(var.values, dtype=np.float64)
            for name, var in ds.data_vars.items()}, elapsed


def compare(first: Path, second: Path) -> dict:
    """Largest relative difference per output, and each store's metric time."""
    a, time_a = _metrics(first)
    b, time_b = _metrics(second)
    differences = {}
    for name in sorted(set(a) & set(b)):
        scale = np.nanmax(np.abs(a[name])) if np.isfinite(a[name]).any() else np.nan
        both = np.isfinite(a[name]) & np.isfinite(b[name])
        if not both.any() or not scale > 0:
            continue
        differences[name] = float(np.max(np.abs(a[name][both] - b[name][both])) / scale)
    return {"first": str(first), "second": str(second), "seconds": [time_a, time_b],
            "max_relative_difference": differences}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("first", type=Path)
    parser.add_argument("second", type=Path)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/gram_forms.json"))
    args = parser.parse_args()
    print(write_result(compare(args.first, args.second), args.out))


if __name__ == "__main__":
    main()
