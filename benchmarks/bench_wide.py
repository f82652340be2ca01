"""Wide layers: ``flq-audit metrics --metric tl`` against ``numpy.linalg.lstsq``, and the Gram
storage of a pythia-70m-shaped layout before and after feature-blocked chunks.

1. ``cnn`` (default): a TinyVGG-shaped CNN (conv-conv-pool-conv-conv-pool, 10 channels, a
   linear classifier) on sklearn's digits upsampled to 28 × 28 (jittered copies up to
   ``--samples``). Layer inputs are 784, 7 840, 1 960, 1 960 and 490 wide: the second conv's
   input is wider than the probe, so flq-audit solves it in the dual (N × N) form. A few
   checkpoints (a short SGD run), audited once with ``flq-audit``. Then, alternating,
   ``--repeats`` times, each in a fresh subprocess: ``python -m flq_audit metrics STORE
   --metric tl --recompute`` and a baseline that reads the same (step, layer) activations from
   the store (xarray, sliced to the width), upcasts them to float64 and calls
   ``numpy.linalg.lstsq`` on the centred targets with ``rcond=1e-6`` (flq-audit's relative
   cut-off; with ``rcond=None`` lstsq keeps float32 rounding directions of the rank-64
   upsampled inputs). Both include start-up and reading. The values must agree to 1e-9.
   Median, min/max and the load average are reported.
2. ``layout``: a weights-only store of pythia-70m's 25 layer shapes (19 of width 512, 6 of
   2 048), random float32 Grams written through the store's writer, ``--steps`` steps; once
   with the current chunks and once with one chunk per padded Gram (the previous layout,
   ``FEATURE_BLOCK`` set beyond the widest layer). Bytes on disk and write seconds.

Run:  python benchmarks/bench_wide.py [cnn|layout|all] [--small] [--repeats N]
Prints one JSON object and writes it to ``--out`` (default benchmarks/results/bench_wide.json).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _results import write_result

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # this checkout's flq_audit, here and in the subprocesses
DEFAULT_OUT = REPO / "benchmarks" / "results" / "bench_wide.json"
#: lstsq's relative singular-value cut-off: flq-audit's rank rule (eigenvalues of HᵀH above
#: 1e-12 · the largest, i.e. singular values above 1e-6 · the largest).
RCOND = 1e-6
SPEC = {"type": "cnn", "in_channels": 1, "input_size": [28, 28], "channels": [10, 10, 10, 10],
        "kernel_sizes": [3, 3, 3, 3], "pool_after": [1, 3], "num_classes": 10}


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}


def make_run(root: Path, samples: int, checkpoints: int) -> Path:
    """Checkpoints of a short SGD run of the TinyVGG-shaped CNN, its spec and the probe."""
    import torch
    import torch.nn.functional as F
    from safetensors.torch import save_file
    from sklearn.datasets import load_digits

    from flq_audit.models.spec import build_from_spec

    torch.manual_seed(0)
    torch.set_num_threads(1)
    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32)[:, None] / 16.0
    images = F.interpolate(images, size=(28, 28), mode="bilinear", align_corners=False)
    labels = torch.tensor(digits.target)
    rng = np.random.default_rng(0)
    picks = np.concatenate([np.arange(len(labels)),
                            rng.integers(0, len(labels), max(0, samples - len(labels)))])[:samples]
    x = images[picks].reshape(len(picks), -1)
    x = x + 0.02 * torch.randn_like(x)  # pixel noise: upsampled 8 × 8 images alone have rank 64
    y = labels[picks]
    root.mkdir(parents=True)
    model = build_from_spec(SPEC)
    optim = torch.optim.SGD(model.parameters(), lr=0.05)
    for step in range(checkpoints):
        if step:
            for begin in range(0, len(x), 128):  # one epoch between checkpoints
                optim.zero_grad()
                F.cross_entropy(model(x[begin:begin + 128]), y[begin:begin + 128]).backward()
                optim.step()
        state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(root / f"step_{step}.safetensors"))
    np.savez(root / "probe.npz", inputs=x.numpy(), targets=y.numpy(), num_classes=np.int64(10))
    (root / "model_spec.json").write_text(json.dumps(SPEC))
    return root


def lstsq_worker(store: str) -> None:
    """Baseline in its own process: TL of every done (step, layer) by ``numpy.linalg.lstsq``."""
    import xarray as xr

    ds = xr.open_zarr(store)
    y = ds["targets"].values.astype(np.float64)
    yc = y - y.mean(axis=0)
    total = float((yc**2).sum())
    out = {}
    for s, step in enumerate(ds["step"].values):
        if not bool(ds["done"][s]):
            continue
        for j, layer in enumerate(ds["layer"].values):
            width = int(ds["width"][j])
            h = ds["activations"][s, j, :, :width].values.astype(np.float64)
            fit = np.linalg.lstsq(h, yc, rcond=RCOND)[0]
            out[f"{int(step)}/{layer}"] = 1.0 - float(((yc - h @ fit) ** 2).sum()) / total
    print(json.dumps(out))


def _timed(cmd: list[str]) -> tuple[float, str]:
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_env(), check=False)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{cmd} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return seconds, proc.stdout


def bench_cnn(samples: int, checkpoints: int, repeats: int, tmp: Path) -> dict:
    import xarray as xr

    run = make_run(tmp / "run", samples, checkpoints)
    store = tmp / "cnn.zarr"
    _timed([sys.executable, "-m", "flq_audit", str(run), "--out", str(store)])
    flq = [sys.executable, "-m", "flq_audit", "metrics", str(store), "--metric", "tl",
           "--recompute"]
    base = [sys.executable, __file__, "--lstsq-worker", str(store)]
    times: dict[str, list[float]] = {"flq_audit_metrics": [], "numpy_lstsq": []}
    loads = [os.getloadavg()[0]]
    baseline: dict[str, float] = {}
    for r in range(repeats):
        order = ("flq_audit_metrics", "numpy_lstsq") if r % 2 == 0 else (
            "numpy_lstsq", "flq_audit_metrics")
        for name in order:
            seconds, stdout = _timed(flq if name == "flq_audit_metrics" else base)
            times[name].append(round(seconds, 2))
            if name == "numpy_lstsq":
                baseline = json.loads(stdout.strip().splitlines()[-1])
        loads.append(os.getloadavg()[0])
    with xr.open_zarr(str(store)) as ds:
        widths = [int(w) for w in ds["width"].values]
        stored = {f"{int(st)}/{layer}": float(ds["target_linearity"].sel(step=st, layer=layer))
                  for st in ds["step"].values for layer in ds["layer"].values}
        dual = ds["target_linearity_dual"].values.max(axis=0).tolist()
        from flq_audit.metrics import cutoff_sensitive

        flags = cutoff_sensitive(ds)
        flagged = {f"{int(st)}/{layer}" for st in ds["step"].values
                   for layer in ds["layer"].values if bool(flags.sel(step=st, layer=layer))}
    sensitive = len(flagged)
    diffs = {key: abs(stored[key] - value) for key, value in baseline.items()}
    diff = max(diffs.values())
    diff_flagged = max((diffs[k] for k in flagged), default=0.0)
    median = {k: statistics.median(v) for k, v in times.items()}
    return {
        "samples": samples, "checkpoints": checkpoints, "layer_widths": widths,
        "dual_form_per_layer": dual, "entries": len(baseline),
        "seconds": times, "median_s": median,
        "spread_s": {k: [min(v), max(v)] for k, v in times.items()},
        "speedup_lstsq_over_flq": round(median["numpy_lstsq"] / median["flq_audit_metrics"], 2),
        "max_abs_tl_difference": diff, "cutoff_sensitive_entries": sensitive,
        "max_abs_tl_difference_cutoff_sensitive": diff_flagged, "same_to_1e-9": diff <= 1e-9,
        "load_average_1min": [round(x, 2) for x in loads], "cpus": os.cpu_count(),
    }


def _write_grams(path: Path, steps: int, grams: dict[int, np.ndarray], widths: list[int]) -> float:
    from flq_audit.store import LayerInfo, StoreLayout, create_or_resume

    layers = tuple(LayerInfo(f"layer{j}", "Linear", w, w) for j, w in enumerate(widths))
    layout = StoreLayout(source="pythia-70m-shaped", steps=tuple(range(steps)),
                         labels=tuple(f"s{s}" for s in range(steps)), commits=("",) * steps,
                         layers=layers, probe=None)
    writer = create_or_resume(path, layout, version="bench")
    start = time.perf_counter()
    try:
        for s in range(steps):
            with writer.step(s) as step:
                for j, w in enumerate(widths):
                    step.write_gram(j, grams[w])
    finally:
        writer.close()
    return time.perf_counter() - start


def _read_grams(path: Path) -> float:
    """Seconds to read every Gram of the store as WᵀW, whatever its stored form (the
    readers' way: ``ds.flq.gram``)."""
    from flq_audit.store import open_dataset

    start = time.perf_counter()
    with open_dataset(path) as ds:
        for layer in ds["layer"].values:
            for step in ds["step"].values:
                ds.flq.gram(int(step), str(layer)).values  # noqa: B018
    return time.perf_counter() - start


def _bytes_and_chunks(folder: Path) -> tuple[int, int]:
    files = [f for f in folder.rglob("*") if f.is_file() and f.name != "zarr.json"]
    return sum(f.stat().st_size for f in files), len(files)


def bench_layout(steps: int, tmp: Path) -> dict:
    from flq_audit.store import _schema

    widths = ([512] * 3 + [2048]) * 6 + [512]  # qkv, dense, h_to_4h, 4h_to_h ×6, embed_out
    rng = np.random.default_rng(0)
    grams = {}
    for w in sorted(set(widths)):
        weight = rng.standard_normal((w, w), dtype=np.float32) / np.float32(np.sqrt(w))
        grams[w] = weight.T @ weight
    real = steps * sum(w * w for w in widths) * 4
    out: dict[str, object] = {"layer_widths": f"{widths.count(512)} × 512, "
                              f"{widths.count(2048)} × 2048", "steps": steps,
                              "real_gram_bytes": real}
    block = _schema.FEATURE_BLOCK
    for name, value in (("padded_one_chunk_per_gram", 1 << 30), ("feature_blocked", block)):
        _schema.FEATURE_BLOCK = value
        try:
            path = tmp / f"{name}.zarr"
            seconds = _write_grams(path, steps, grams, widths)
        finally:
            _schema.FEATURE_BLOCK = block
        size, chunks = _bytes_and_chunks(path / "gram")
        out[name] = {"write_s": round(seconds, 2), "read_s": round(_read_grams(path), 2),
                     "gram_bytes_on_disk": size, "gram_chunk_files": chunks}
        shutil.rmtree(path)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", nargs="?", default="cnn", choices=["cnn", "layout", "all"])
    parser.add_argument("--small", action="store_true", help="600 samples, 2 checkpoints, 1 step")
    parser.add_argument("--samples", type=int, default=3000)
    parser.add_argument("--checkpoints", type=int, default=3)
    parser.add_argument("--steps", type=int, default=2, help="steps of the pythia layout")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--lstsq-worker", metavar="STORE", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.lstsq_worker:
        lstsq_worker(args.lstsq_worker)
        return
    if args.small:
        args.samples, args.checkpoints, args.steps = 600, 2, 1
    result: dict[str, object] = {"command": " ".join(sys.argv)}
    with tempfile.TemporaryDirectory() as tmp:
        if args.what in ("cnn", "all"):
            result["cnn"] = bench_cnn(args.samples, args.checkpoints, args.repeats,
                                      Path(tmp) / "cnn")
        if args.what in ("layout", "all"):
            (Path(tmp) / "layout").mkdir()
            result["layout"] = bench_layout(args.steps, Path(tmp) / "layout")
    print(write_result(result, args.out))


if __name__ == "__main__":
    main()
