"""Benchmark flq-audit's metric kernels against the reference recipe, and lazy store metrics.

1. Kernels, Gaussian H (N × d), one-hot Y (C classes), W (C × d and d × d): streamed float64 moments
   + eigh TL + Gram surrogate versus the reference (docs/concepts.md): float32, explicit
   ``np.linalg.inv(HᵀH)``, Ŷ = H (G⁻¹ (HᵀY_c)), row-mean TL denominator, surrogate = mean(diag(Y_cᵀ
   ZZᵀ Y_c)) with the N × N ZZᵀ. Speed: medians here, order alternating, at 1 and 2 OpenBLAS threads.
   Memory: VmHWM of fresh subprocesses (same imports, same inputs); ``net`` = peak − the ``floor``
   worker's peak (imports + inputs), ``net_vs_import`` = peak − its VmHWM right after the imports.
2. A 50-step, 6-Linear MLP checkpoint folder + probe, audited into a store (untimed); then
   ``compute_metrics(metrics=[tl, surrogate, gram, nc])`` on a fresh copy each time, threaded vs
   ``LocalCluster(n_workers=2, threads_per_worker=1, processes=True)`` (warm-up each, medians, start-up
   apart), plus one distributed run's task stream and one threaded run's cProfile (main thread).

Run:  /work/venv/bin/python benchmarks/bench_metrics.py [--quick] [--repeats N] [--out PATH]
Prints one JSON object and writes it to ``--out`` (default benchmarks/results/bench_metrics.json).
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import platform
import pstats
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import dask
import numpy as np
import threadpoolctl
from _results import write_result
from dask.distributed import Client, LocalCluster, get_task_stream
from dask.utils import key_split

import flq_audit
from flq_audit.metrics._kernels.moments import Moments, _moments_update
from flq_audit.metrics._kernels.surrogate import _surrogate_compute
from flq_audit.metrics._kernels.target_linearity import _target_linearity_compute

SEED = 0
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "bench_metrics.json"
SPEC = {"type": "mlp", "in_features": 32, "widths": [64, 64, 64, 64, 64], "out_features": 10,
        "activation": "gelu", "bias": True}
METRICS = ["tl", "surrogate", "gram", "nc"]


def hwm_mib() -> float:
    with open("/proc/self/status") as status:
        return round(next(int(ln.split()[1]) for ln in status if ln.startswith("VmHWM")) / 1024, 1)


def make_data(n: int, d: int, c: int, w_rows: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Float32 Gaussian H (n × d), one-hot Y (n × c), W (w_rows × d) scaled by 1/√d."""
    rng = np.random.default_rng(SEED)
    h, y = rng.standard_normal((n, d), dtype=np.float32), np.eye(c, dtype=np.float32)[rng.integers(0, c, n)]
    return h, y, rng.standard_normal((w_rows, d), dtype=np.float32) / np.float32(np.sqrt(d))


def reference(h: np.ndarray, y: np.ndarray, w: np.ndarray) -> tuple[float, float]:
    """The reference recipe in float32: ``(tl, surrogate per class)``."""
    yc = y - y.mean(axis=0)
    y_hat = h @ (np.linalg.inv(h.T @ h) @ (h.T @ yc))
    den = yc - yc.mean(axis=1, keepdims=True)  # the reference's row-mean denominator
    tl = 1.0 - float(((yc - y_hat) ** 2).sum()) / float((den**2).sum())
    z = h @ w.T
    return tl, float(np.diag(yc.T @ (z @ z.T) @ yc).mean())  # z @ z.T is N × N


def flq(h: np.ndarray, y: np.ndarray, w: np.ndarray, chunk: int) -> tuple[float, float]:
    """flq-audit's kernels: streamed float64 moments, eigh TL, Gram surrogate."""
    total = _moments_update(h[:chunk], y[:chunk])
    for i in range(chunk, h.shape[0], chunk):
        total += _moments_update(h[i : i + chunk], y[i : i + chunk])
    m, w64 = Moments.from_matrix(total, h.shape[1], y.shape[1]), w.astype(np.float64)
    return _target_linearity_compute(m)[0], _surrogate_compute(m, w64.T @ w64).surrogate_per_class


def worker(mode: str, n: int, d: int, c: int, w_rows: int, chunk: int) -> None:
    """One fresh process: this module's imports, the inputs, then ``ref``, ``flq`` or nothing."""
    after_import = hwm_mib()
    h, y, w = make_data(n, d, c, w_rows)
    {"ref": lambda: reference(h, y, w), "flq": lambda: flq(h, y, w, chunk), "floor": lambda: 0}[mode]()
    print(json.dumps({"after_import": after_import, "peak": hwm_mib()}))


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return round(time.perf_counter() - start, 4)


def alternate(first, second, repeats: int) -> tuple[list[float], list[float]]:
    """Each callable returns its own seconds; the order swaps every repeat."""
    runs: tuple[list[float], list[float]] = ([], [])
    for r in range(repeats):
        for i in (0, 1) if r % 2 == 0 else (1, 0):
            runs[i].append((first, second)[i]())
    return runs


def bench_kernels(n: int, d: int, c: int, w_rows: int, chunk: int, repeats: int, blas: int) -> dict:
    cmd = [sys.executable, __file__, "--worker", "MODE", *map(str, (n, d, c, w_rows, chunk, blas))]
    mems = {mode: json.loads(subprocess.run([*cmd[:3], mode, *cmd[4:]], capture_output=True, text=True,
                                            check=True).stdout.splitlines()[-1])
            for mode in ("floor", "ref", "flq")}
    h, y, w = make_data(n, d, c, w_rows)
    (tl_ref, s_ref), (tl_flq, s_flq) = reference(h, y, w), flq(h, y, w, chunk)  # also warm-ups
    seconds, ratio = {}, {}
    for threads in (1, 2):  # OpenBLAS threads: a loaded 2-core machine punishes 2 (spin-waits)
        with threadpoolctl.threadpool_limits(threads, user_api="blas"):
            t_ref, t_flq = alternate(lambda: timed(lambda: reference(h, y, w)),
                                     lambda: timed(lambda: flq(h, y, w, chunk)), repeats)
        med = {"reference": statistics.median(t_ref), "flq": statistics.median(t_flq)}
        seconds[f"blas{threads}"] = {**med, "reference_runs": t_ref, "flq_runs": t_flq}
        ratio[f"blas{threads}"] = round(med["reference"] / med["flq"], 1)
    hwm = {"import_floor": mems["floor"]["after_import"], **{k: v["peak"] for k, v in mems.items()}}
    net = {k: round(hwm[k] - hwm["floor"], 1) for k in ("ref", "flq")}
    net_imp = {k: round(hwm[k] - hwm["import_floor"], 1) for k in ("ref", "flq")}
    return {
        "w_shape": [w_rows, d], "seconds": seconds, "speed_ratio": ratio,
        "memory_mib": {"vmhwm": hwm, "net": net, "net_vs_import": net_imp},
        "memory_ratio": round(net["ref"] / max(net["flq"], 0.1), 1),
        "memory_ratio_vs_import": round(net_imp["ref"] / max(net_imp["flq"], 0.1), 1),
        "tl": {"reference": tl_ref, "flq": tl_flq, "abs_diff": abs(tl_ref - tl_flq)},
        "surrogate_per_class": {"reference": s_ref, "flq": s_flq, "rel_diff": abs(s_ref / s_flq - 1)},
    }


def build_store(tmp: Path, steps: int, samples: int) -> tuple[Path, dict]:
    """An MLP checkpoint folder (drifting random weights) + class probe, audited into a store."""
    import torch
    from safetensors.torch import save_file

    from flq_audit.api import audit, open_store
    from flq_audit.models import build_from_spec

    torch.manual_seed(SEED)
    source, store = tmp / "ckpt", tmp / "pristine.zarr"
    source.mkdir()
    init = {k: v.detach() for k, v in build_from_spec(SPEC).state_dict().items()}
    drift = {k: 0.02 * torch.randn_like(v) for k, v in init.items()}  # W_t = W_0 + t Δ
    for t in range(steps):
        save_file({k: v + t * drift[k] for k, v in init.items()}, str(source / f"step_{10 * t}.safetensors"))
    rng = np.random.default_rng(SEED)
    labels = rng.integers(0, 10, samples)
    inputs = rng.normal(size=(10, 32))[labels] + rng.normal(size=(samples, 32))
    np.savez(source / "probe.npz", inputs=inputs.astype(np.float32), targets=labels, num_classes=10)
    (source / "model_spec.json").write_text(json.dumps(SPEC))
    seconds, ds = timed(lambda: audit(str(source), out=store, device="cpu")), open_store(store)
    if not ds["done"].all():
        raise RuntimeError(f"audit left steps undone: {ds['done'].values}")
    return store, {"activations_shape": dict(ds["activations"].sizes), "audit_seconds": seconds,
                   "chunks": str(ds["activations"].data.chunksize),
                   "store_bytes": sum(f.stat().st_size for f in store.rglob("*") if f.is_file())}


def task_stream(addr: str, fn) -> dict:
    """Tasks and worker seconds per task prefix and action (compute/transfer) of one distributed run."""
    with Client(addr) as client, get_task_stream(client) as stream:
        wall = timed(fn)
    busy: dict[str, list] = {}
    for task in stream.data:
        for s in task["startstops"]:
            row = busy.setdefault(f"{key_split(task['key'])}:{s['action']}", [0, 0.0])
            row[0], row[1] = row[0] + 1, row[1] + s["stop"] - s["start"]
    top = sorted(busy.items(), key=lambda kv: -kv[1][1])[:8]
    return {"seconds": wall, "n_tasks": len(stream.data),
            "worker_busy_seconds": round(sum(v[1] for v in busy.values()), 2),
            "top_worker_seconds_as_count_seconds": {k: [n, round(t, 3)] for k, (n, t) in top}}


def profile(fn) -> dict:
    """cProfile of ``fn`` in this thread: total, time waiting on locks, top cumulative/self rows."""
    profiler = cProfile.Profile()
    profiler.runcall(fn)
    stats = pstats.Stats(profiler).stats  # {(file, line, func): (cc, ncalls, tottime, cumtime, _)}

    def top(col: int, k: int) -> list[str]:
        rows = sorted(stats.items(), key=lambda kv: -kv[1][col])
        return [f"{v[col]:.3f}s {v[1]}x {Path(f).name}:{line}({func})" for (f, line, func), v in rows][:k]

    waiting = sum(v[2] for k, v in stats.items() if "acquire" in k[2])
    return {"seconds": round(max(v[3] for v in stats.values()), 3), "waiting_in_lock_acquire_seconds":
            round(waiting, 3), "top_cumulative": top(3, 14), "top_self": top(2, 8)}


def bench_store(tmp: Path, steps: int, samples: int, repeats: int) -> dict:
    from flq_audit.api import compute_metrics

    store, sizes = build_store(tmp, steps, samples)
    scratch, results = tmp / "scratch.zarr", {}

    def run(scheduler: str, key: str, measure=timed):
        shutil.rmtree(scratch, ignore_errors=True)
        shutil.copytree(store, scratch)  # fresh: no persisted metric to read back (not measured)
        return measure(lambda: results.update({key: compute_metrics(scratch, metrics=METRICS,
                                                                    scheduler=scheduler)}))

    start = time.perf_counter()
    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None)
    startup = time.perf_counter() - start
    try:
        addr = cluster.scheduler_address
        warmup = {"threads": run("threads", "threads"), "distributed": run(addr, "distributed")}
        t_thr, t_dist = alternate(lambda: run("threads", "threads"), lambda: run(addr, "distributed"),
                                  repeats)
        stream = run(addr, "distributed", lambda fn: task_stream(addr, fn))
    finally:
        cluster.close()
    thr, dist = results["threads"], results["distributed"]
    diff = max(float(abs(thr[v] - dist[v]).max()) for v in thr.data_vars if thr[v].dtype.kind == "f")
    med_thr, med_dist = statistics.median(t_thr), statistics.median(t_dist)
    return {
        **sizes, "metrics": METRICS, "cluster_startup_seconds": round(startup, 3),
        "warmup_seconds": warmup, "threads_seconds": med_thr, "distributed_seconds": med_dist,
        "distributed_over_threads": round(med_dist / med_thr, 2), "threads_runs": t_thr,
        "distributed_runs": t_dist, "max_abs_diff_threads_vs_distributed": diff,
        "distributed_task_stream": stream, "threads_cprofile": run("threads", "threads", profile),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="N=5000, 10 steps, 1000 samples, 1 repeat")
    parser.add_argument("--repeats", type=int, default=3, help="store runs; kernels use max(5, this)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--chunk", type=int, default=4096, help="rows per moments chunk")
    parser.add_argument("--blas-threads", type=int, default=1, help="OpenBLAS threads; 0: its default")
    parser.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        with threadpoolctl.threadpool_limits(int(args.worker[-1]) or None, user_api="blas"):
            worker(args.worker[0], *map(int, args.worker[1:-1]))
        return
    n, d, c, steps, samples = (5000, 256, 10, 10, 1000) if args.quick else (20000, 256, 10, 50, 4000)
    repeats = 1 if args.quick else args.repeats
    t0, load = time.perf_counter(), {"start": np.round(os.getloadavg(), 2).tolist()}
    kernels = {"n": n, "d": d, "classes": c, "chunk_rows": args.chunk, "input_mib_w256": round(
        (n * d + n * c + d * d) * 4 / 2**20, 1), "nxn_float32_mib": round(n * n * 4 / 2**20, 1),
        "chance_floor_d_over_n": d / n, "goals": {"speed_ratio": 10, "memory_ratio": 50}}
    with threadpoolctl.threadpool_limits(args.blas_threads or None, user_api="blas"):
        for w_rows in (c, d):
            kernels[f"w{w_rows}x{d}"] = bench_kernels(n, d, c, w_rows, args.chunk, max(5, repeats),
                                                      args.blas_threads)
        load["after_kernels"] = np.round(os.getloadavg(), 2).tolist()
        with tempfile.TemporaryDirectory(prefix="bench_metrics_") as tmp:
            lazy = bench_store(Path(tmp), steps, samples, repeats)
    result = {
        "config": {"quick": args.quick, "repeats": repeats, "seed": SEED, "cpu_count": os.cpu_count(),
                   "versions": [platform.python_version(), np.__version__, dask.__version__,
                                flq_audit.__version__],  # python, numpy, dask, flq_audit
                   "blas_threads": args.blas_threads,  # dask's nanny gives cluster workers 1
                   "loadavg": {**load, "end": np.round(os.getloadavg(), 2).tolist()}},
        "kernels": kernels, "lazy_metrics": lazy, "seconds_total": round(time.perf_counter() - t0, 1),
    }
    print(write_result(result, args.out))


if __name__ == "__main__":
    main()
