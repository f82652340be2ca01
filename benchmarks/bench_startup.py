"""Benchmark the start-up of the read-side commands against ``python -c "import xarray"``.

Setup (untimed): a fresh subprocess writes a small checkpoint folder (3 steps of a 6→8→8→3
MLP, 40 probe samples) and audits it into a store, so the timed commands read a real store.

Timed, each in a fresh subprocess, ``--repeats`` times with the order rotated every round:

- ``baseline``: ``python -c "import xarray"`` (what any xarray-based reader pays);
- ``help``: ``flq-audit --help``;
- ``show``: ``flq-audit show STORE``.

For each: median, min, max and spread (max − min) of the wall time in seconds, and the median
peak RSS in MiB (``ru_maxrss`` of the child, from ``wait4``). ``ratio`` = median / baseline
median (goal ≤ 1.5). ``flq-audit`` is run as ``python -m flq_audit`` with the interpreter that
runs this script, so the package on ``PYTHONPATH`` is the one measured.

Run:  python benchmarks/bench_startup.py [--repeats N] [--out PATH]
Prints one JSON object and writes it to ``--out`` (default benchmarks/results/bench_startup.json).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _results import write_result

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "bench_startup.json"
SPEC = {"type": "mlp", "in_features": 6, "widths": [8, 8], "out_features": 3,
        "activation": "gelu", "bias": True}


def make_store(root: Path) -> Path:
    """Write a 3-step checkpoint folder under ``root`` and audit it; returns the store path."""
    import numpy as np
    import torch
    from safetensors.torch import save_file

    from flq_audit.api import audit
    from flq_audit.models import build_from_spec

    run = root / "run"
    run.mkdir(parents=True, exist_ok=True)
    for step in (0, 10, 20):
        torch.manual_seed(step)
        state = {k: v.contiguous() for k, v in build_from_spec(SPEC).state_dict().items()}
        save_file(state, str(run / f"step_{step}.safetensors"))
    rng = np.random.default_rng(0)
    np.savez(run / "probe.npz", inputs=rng.normal(size=(40, 6)).astype(np.float32),
             targets=rng.integers(0, 3, 40), num_classes=np.int64(3))
    (run / "model_spec.json").write_text(json.dumps(SPEC))
    store = root / "store.zarr"
    result = audit(str(run), out=store)
    if getattr(result, "failed", None):
        raise RuntimeError(f"setup audit failed: {result.failed}")
    return store


def timed(command: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Wall seconds and peak RSS (MiB) of one run of ``command``; raises if it fails."""
    start = time.perf_counter()
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    if proc.returncode != 0:
        raise RuntimeError(f"{command} exited {proc.returncode}:\n{err}")
    return elapsed, usage.ru_maxrss / 1024


def summarise(times: list[float], rss: list[float]) -> dict[str, float]:
    return {
        "median_s": round(statistics.median(times), 3), "min_s": round(min(times), 3),
        "max_s": round(max(times), 3), "spread_s": round(max(times) - min(times), 3),
        "median_rss_mib": round(statistics.median(rss), 1),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--make-store", type=Path, help=argparse.SUPPRESS)  # setup worker
    args = parser.parse_args(argv)
    if args.make_store:
        print(make_store(args.make_store))
        return {}
    env = dict(os.environ, NO_COLOR="1", HF_HUB_OFFLINE="1", HF_HUB_DISABLE_TELEMETRY="1")
    with tempfile.TemporaryDirectory(prefix="flq-bench-startup-") as tmp:
        setup = subprocess.run([sys.executable, __file__, "--make-store", tmp], env=env,
                               capture_output=True, text=True, check=True)
        store = setup.stdout.strip().splitlines()[-1]
        commands = {
            "baseline": [sys.executable, "-c", "import xarray"],
            "help": [sys.executable, "-m", "flq_audit", "--help"],
            "show": [sys.executable, "-m", "flq_audit", "show", store],
        }
        for command in commands.values():  # warm the file cache; not timed
            timed(command, env)
        samples: dict[str, tuple[list[float], list[float]]] = {k: ([], []) for k in commands}
        names = list(commands)
        for round_ in range(args.repeats):
            for name in names[round_ % len(names):] + names[:round_ % len(names)]:
                seconds, mib = timed(commands[name], env)
                samples[name][0].append(seconds)
                samples[name][1].append(mib)
    stats = {name: summarise(*values) for name, values in samples.items()}
    base = stats["baseline"]["median_s"]
    result = {
        "benchmark": "startup", "repeats": args.repeats, "python": platform.python_version(),
        "cpus": os.cpu_count(), "commands": {k: " ".join(v[1:]) for k, v in commands.items()},
        "stats": stats,
        "ratios": {name: round(stats[name]["median_s"] / base, 2) for name in ("help", "show")},
        "goal_ratio": 1.5,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    print(write_result(result, args.out))
    return result


if __name__ == "__main__":
    main()
