"""Benchmark ``flq_audit.api.audit`` against a bare load-and-forward baseline.

Setup (untimed): train the digits-MLP recipe once into a temp dir (3000 steps, 13 safetensors
checkpoints), then tile its probe ×1, ×2, ×4, ×8 with small Gaussian jitter (σ=0.01) into
``.npz`` probes (inputs/targets/num_classes).

1. Speed, in this process, with imports done beforehand and one untimed warm-up of each side:
   ``audit(source, out=..., overwrite=True, batch_size=B, device="cpu")`` versus a baseline that,
   per checkpoint, runs ``safetensors.torch.load_file`` + ``model.load_state_dict`` + a forward
   of the whole probe in batches of B under ``torch.no_grad()`` (no hooks, no writes; the model
   is built once, outside the timer). Median of ``--repeats`` runs, the order alternating;
   ``ratio = audit / baseline`` (goal ≤ 1.3), at ×1 (the recipe's own probe) and at the largest
   size. The previous run's store is deleted before the timer starts.
2. Memory: the audit, the baseline and (on the largest store) ``compute_metrics`` each run in a
   fresh subprocess (``--worker ...``) that reports ``ru_maxrss`` and ``VmHWM``. Workers are
   spawned before this process imports torch, because Linux carries the parent's RSS
   high-water mark into a child's ``ru_maxrss`` across fork+exec; ``VmHWM`` is immune to that.
   ``ratio = peak(×8) / peak(×1)`` (goal ≤ 1.2).

Torch runs on ``--threads 1`` by default: on a small shared machine (2 cores, other jobs) two
OpenMP threads spin-wait and make a 512×128 matmul up to 20× slower and very noisy, which would
drown the audit's own overhead in both numerator and denominator. ``--threads 0`` keeps torch's
default. The training worker always uses one thread (it is setup, not measured).

Run:  /work/venv/bin/python benchmarks/bench_audit.py [--quick] [--repeats N] [--out PATH]
Prints one JSON object and writes it to ``--out`` (default benchmarks/results/bench_audit.json).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _results import write_result

SEED = 0
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "bench_audit.json"


def peak_rss() -> dict[str, float]:
    """This process's peak RSS in MiB, from getrusage (KiB on Linux) and /proc VmHWM."""
    with open("/proc/self/status") as status:
        hwm = next(int(line.split()[1]) for line in status if line.startswith("VmHWM"))
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"ru_maxrss_mib": round(maxrss / 1024, 1), "vmhwm_mib": round(hwm / 1024, 1)}


def seed_all(threads: int) -> None:
    import torch

    random.seed(SEED)
    np.random.seed(SEED)
    torch.manual_seed(SEED)
    if threads:
        torch.set_num_threads(threads)


def checkpoints(source: Path) -> list[Path]:
    return sorted(source.glob("step_*.safetensors"), key=lambda p: int(p.stem.split("_")[1]))


def tile_probe(source: Path, factor: int, folder: Path) -> Path:
    """The recipe's probe repeated ``factor`` times; copies after the first get N(0, σ²) jitter."""
    with np.load(source / "probe.npz") as data:
        inputs, targets, classes = data["inputs"], data["targets"], data["num_classes"]
    rng = np.random.default_rng(SEED + factor)
    noise = rng.normal(0.0, 0.01, size=(factor, *inputs.shape)).astype(np.float32)
    noise[0] = 0.0
    tiled = (inputs[None] + noise).reshape(-1, *inputs.shape[1:])
    path = folder / f"probe_x{factor}.npz"
    np.savez(path, inputs=tiled, targets=np.tile(targets, factor), num_classes=classes)
    return path


def baseline(source: Path, probe: Path, batch_size: int) -> float:
    """Seconds for load_file + load_state_dict + a no-grad forward of the probe, per checkpoint."""
    import torch
    from safetensors.torch import load_file

    from flq_audit.models import build_model

    model = build_model(str(source / "model_spec.json")).module.eval()
    with np.load(probe) as data:
        inputs = torch.from_numpy(data["inputs"].astype(np.float32))
    start = time.perf_counter()
    for path in checkpoints(source):
        model.load_state_dict(load_file(str(path)))
        with torch.no_grad():
            for i in range(0, inputs.shape[0], batch_size):
                model(inputs[i : i + batch_size])
    return time.perf_counter() - start


def audit(source: Path, probe: Path | None, out: Path, batch_size: int, steps: str = "all") -> float:
    from flq_audit.api import audit as run

    shutil.rmtree(out, ignore_errors=True)  # deleting the last run's store is not audit work
    start = time.perf_counter()
    result = run(str(source), steps=steps, probe=None if probe is None else str(probe), out=out,
                 overwrite=True, batch_size=batch_size, device="cpu")
    elapsed = time.perf_counter() - start
    if result.failed:
        raise RuntimeError(f"audit failed: {result.failed}")
    return elapsed


def worker(args: list[str], threads: int) -> None:
    """Fresh-process modes: train, audit, baseline, metrics. Prints one JSON line."""
    mode, *rest = args
    import torch  # noqa: F401  (the import floor is part of every worker's report)

    import flq_audit.api as api

    seed_all(1 if mode == "train" else threads)
    report: dict[str, object] = {"after_import": peak_rss()}
    start = time.perf_counter()
    if mode == "train":
        from flq_audit.recipes.digits_mlp import train

        train(rest[0], total_steps=int(rest[1]), seed=SEED)
    elif mode == "audit":
        audit(Path(rest[0]), Path(rest[1]), Path(rest[2]), int(rest[3]))
    elif mode == "baseline":
        baseline(Path(rest[0]), Path(rest[1]), int(rest[2]))
    elif mode == "metrics":
        api.compute_metrics(rest[0])
    else:
        raise SystemExit(f"unknown worker mode {mode!r}")
    report |= {"seconds": round(time.perf_counter() - start, 3), "peak": peak_rss()}
    print(json.dumps(report))


def spawn(threads: int, *args: object) -> dict:
    cmd = [sys.executable, __file__, "--threads", str(threads), "--worker", *map(str, args)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"{cmd} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def alternate(first, second, repeats: int) -> tuple[list[float], list[float]]:
    """Run ``first`` and ``second`` ``repeats`` times each, swapping the order every repeat."""
    runs: tuple[list[float], list[float]] = ([], [])
    for r in range(repeats):
        for i in (0, 1) if r % 2 == 0 else (1, 0):
            runs[i].append((first, second)[i]())
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="1 repeat, sizes ×1 and ×8 only")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--train-steps", type=int, default=3000)
    parser.add_argument("--threads", type=int, default=1, help="torch threads; 0: torch's default")
    parser.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.threads)
        return
    repeats = 1 if args.quick else args.repeats
    factors = (1, 8) if args.quick else (1, 2, 4, 8)
    big, bs, t0, load_start = factors[-1], args.batch_size, time.perf_counter(), os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench_audit_") as tmp:
        tmpdir = Path(tmp)
        source = tmpdir / "ckpt"
        train = spawn(args.threads, "train", source, args.train_steps)
        probes = {k: tile_probe(source, k, tmpdir) for k in factors}
        with np.load(source / "probe.npz") as data:
            n_samples = {f"x{k}": int(data["inputs"].shape[0]) * k for k in factors}
        stores = {k: tmpdir / f"store_x{k}.zarr" for k in factors}
        parent_before = peak_rss()  # small: the workers' ru_maxrss cannot carry much of it
        mem_audit = {k: spawn(args.threads, "audit", source, probes[k], stores[k], bs) for k in factors}
        mem_base = {k: spawn(args.threads, "baseline", source, probes[k], bs) for k in factors}
        mem_metrics = spawn(args.threads, "metrics", stores[big])
        store_bytes = {f"x{k}": sum(f.stat().st_size for f in stores[k].rglob("*") if f.is_file())
                       for k in factors}

        import torch

        import flq_audit
        from flq_audit.api import list_checkpoints

        seed_all(args.threads)
        refs = list_checkpoints(str(source))
        scratch = tmpdir / "speed.zarr"
        audit(source, None, scratch, bs, steps="first")  # warm-ups: lazy imports, first calls
        baseline(source, source / "probe.npz", bs)
        speed = {}
        for k, probe in ((1, None), (big, probes[big])):
            runs_a, runs_b = alternate(
                lambda p=probe: audit(source, p, scratch, bs),
                lambda p=probe: baseline(source, p or source / "probe.npz", bs), repeats)
            med_a, med_b = statistics.median(runs_a), statistics.median(runs_b)
            speed[f"x{k}"] = {
                "n_samples": n_samples[f"x{k}"], "audit_seconds": round(med_a, 3),
                "baseline_seconds": round(med_b, 3), "ratio": round(med_a / med_b, 2),
                "audit_runs": [round(x, 3) for x in runs_a],
                "baseline_runs": [round(x, 3) for x in runs_b],
            }

    def peaks(runs: dict, key: str) -> dict[str, float]:
        return {f"x{k}": run["peak"][key] for k, run in runs.items()}

    a_rss, b_rss = peaks(mem_audit, "ru_maxrss_mib"), peaks(mem_base, "ru_maxrss_mib")
    result = {
        "config": {
            "quick": args.quick, "repeats": repeats, "batch_size": bs, "seed": SEED,
            "train_steps": args.train_steps, "torch_threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count(), "python": platform.python_version(),
            "torch": torch.__version__, "flq_audit": flq_audit.__version__,
            "loadavg_start": [round(x, 2) for x in load_start],
            "loadavg_end": [round(x, 2) for x in os.getloadavg()],
        },
        "sizes": {
            "n_checkpoints": len(refs), "checkpoint_bytes": sum(r.size_bytes for r in refs),
            "n_samples": n_samples, "store_bytes": store_bytes,
        },
        "speed": {**speed, "goal_ratio": 1.3},
        "memory": {
            "audit_peak_rss_mib": a_rss, "audit_vmhwm_mib": peaks(mem_audit, "vmhwm_mib"),
            "audit_rss_after_import_mib": mem_audit[1]["after_import"]["ru_maxrss_mib"],
            "audit_seconds": {f"x{k}": run["seconds"] for k, run in mem_audit.items()},
            "audit_ratio": round(a_rss[f"x{big}"] / a_rss["x1"], 3),
            "baseline_peak_rss_mib": b_rss, "baseline_vmhwm_mib": peaks(mem_base, "vmhwm_mib"),
            "baseline_ratio": round(b_rss[f"x{big}"] / b_rss["x1"], 3),
            f"compute_metrics_x{big}": {"seconds": mem_metrics["seconds"], **mem_metrics["peak"]},
            "parent_rss_at_spawn_mib": parent_before["ru_maxrss_mib"], "goal_ratio": 1.2,
        },
        "seconds": {"train": train["seconds"], "total": round(time.perf_counter() - t0, 1)},
    }
    print(write_result(result, args.out))


if __name__ == "__main__":
    main()
