"""Benchmark ``metrics`` after steps were added to a store against a from-scratch run.

A 40-step, 6-Linear MLP checkpoint folder + a 512-sample probe is audited into a store
(untimed). Its metrics (tl, surrogate, gram, dynamics, nc) are computed while its last
``--added`` steps are not done (``done`` cleared with zarr: steps not audited yet), then
``done`` is set back: the state after steps arrive. On fresh copies of that store, timed:

- ``incremental``: ``compute_metrics`` (per-step groups compute the added steps only);
- ``scratch``: ``compute_metrics(recompute=True)`` (every group over every done step).

The two alternate (order swapped each repeat); each repeat's ratio scratch / incremental is
reported with the median and the spread (min, max). The kernel calls of each are counted
(``counting_blocks``).

Run:  PYTHONPATH=$PWD python benchmarks/bench_metrics_incremental.py [--repeats N] [--added K]
Prints one JSON object and writes it to ``--out``
(default benchmarks/results/bench_metrics_incremental.json).
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import zarr
from _results import write_result

from flq_audit import api
from flq_audit.metrics._graph import counting_blocks
from tests._helpers.runs import make_run

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "bench_metrics_incremental.json"
SPEC = {"type": "mlp", "in_features": 32, "widths": [64, 64, 64, 64, 64], "out_features": 10,
        "activation": "gelu", "bias": True}
GROUPS = ["tl", "surrogate", "gram", "dynamics", "nc"]


def set_done(store: Path, count: int, value: bool) -> None:
    """Set ``done`` of the last ``count`` steps."""
    group = zarr.open_group(str(store), mode="r+")
    done = np.asarray(group["done"][:])
    done[len(done) - count:] = value
    group["done"][:] = done


def timed(base: Path, work: Path, name: str, recompute: bool) -> tuple[float, int]:
    store = work / f"{name}.zarr"
    shutil.rmtree(store, ignore_errors=True)
    shutil.copytree(base, store)
    with counting_blocks() as counts:
        start = time.perf_counter()
        api.compute_metrics(store, metrics=GROUPS, recompute=recompute)
        seconds = time.perf_counter() - start
    return seconds, sum(counts.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--added", type=int, default=4)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        run = make_run(work / "run", steps=tuple(range(0, 10 * args.steps, 10)), spec=SPEC,
                       n_samples=512)
        base = work / "base.zarr"
        api.audit(str(run), out=base)
        set_done(base, args.added, False)
        api.compute_metrics(base, metrics=GROUPS)
        set_done(base, args.added, True)
        timed(base, work, "warm", False)  # imports, first graph builds
        rows = []
        for repeat in range(args.repeats):
            order = [("incremental", False), ("scratch", True)]
            if repeat % 2:
                order.reverse()
            row = {}
            for name, recompute in order:
                seconds, blocks = timed(base, work, name, recompute)
                row[name], row[f"{name}_blocks"] = round(seconds, 3), blocks
            row["ratio"] = round(row["scratch"] / row["incremental"], 2)
            rows.append(row)
    ratios = [r["ratio"] for r in rows]
    result = {
        "what": f"metrics {GROUPS} after {args.added} of {args.steps} steps were added vs "
                "from scratch (recompute), same store, same run",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "repeats": rows,
        "ratio_median": statistics.median(ratios),
        "ratio_spread": [min(ratios), max(ratios)],
        "incremental_median_s": statistics.median(r["incremental"] for r in rows),
        "scratch_median_s": statistics.median(r["scratch"] for r in rows),
    }
    print(write_result(result, args.out))


if __name__ == "__main__":
    main()
