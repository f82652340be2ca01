"""Train the grokking recipe at its defaults (25 000 steps; about a minute of one CPU core).

The test suite trains a shortened run (tests/conftest.py ``GROKKING_FAST``); this keeps the full
recipe measured: wall time, the first step with train accuracy 1, the first with test accuracy
≥ 0.9, and the final accuracies.

Run:  python benchmarks/bench_grokking.py [--steps N] [--out PATH]
Prints one JSON object and writes it to ``--out`` (default benchmarks/results/bench_grokking.json).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from _results import write_result

from flq_audit.recipes import grokking_mlp

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "bench_grokking.json"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=25_000)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="flq-bench-grokking-") as tmp:
        started = time.perf_counter()
        out = grokking_mlp.train(tmp, total_steps=args.steps)
        elapsed = time.perf_counter() - started
        history = json.loads((out / "metrics.json").read_text())["checkpoints"]
    memorised = next((c["step"] for c in history if c["train_accuracy"] == 1.0), None)
    generalised = next((c["step"] for c in history if c["test_accuracy"] >= 0.9), None)
    result = {
        "benchmark": "grokking", "steps": args.steps, "wall_s": round(elapsed, 1),
        "memorised_step": memorised, "generalised_step": generalised,
        "final": history[-1],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    print(write_result(result, args.out))
    return result


if __name__ == "__main__":
    main()
