"""Benchmark the metric suite against TL alone, and TL against a hand ``numpy.linalg.lstsq`` loop.

Two stores are made once (untimed, cached under ``--work``):

- ``neox.zarr``: the GPT-NeoX sequence of ``bench_scale.py`` (pythia-70m shape, 6 steps, 512
  texts, ``--pooling last``; ``--quick``: its 2-layer, 128-wide ``SMALL`` shape);
- ``digits.zarr``: the digits-MLP recipe (13 steps, 1,797 samples).

Each measured run is a fresh subprocess (wall, its own user+sys CPU and peak RSS from
``os.wait4``), A and B alternating, paired, reported as median [min–max] with the ratio of
each pair:

a. ``flq-audit metrics neox.zarr --metric tl,surrogate,gram,dynamics,nc --recompute`` vs
   ``--metric tl --recompute``: goal ≤ 3× (CPU);
b. ``flq-audit metrics digits.zarr --metric tl --recompute`` vs a script a user would write
   (open the store with xarray, ``lstsq`` of the centred targets on each (step, layer)'s
   activations): time ratio (goal ≤ 1.0) and the largest absolute TL difference (goal ≤ 1e-12).

Run:  python benchmarks/bench_suite.py [--quick] [--repeats N] [--work DIR] [--out PATH]
Prints one JSON object and writes it to ``--out`` (default benchmarks/results/bench_suite.json).
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
from _results import write_result
from bench_scale import PYTHIA_70M, SMALL, make_neox, spawn_measure

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "bench_suite.json"
SUITE = "tl,surrogate,gram,dynamics,nc"
HAND_LSTSQ = r'''
import sys
import numpy as np
import xarray as xr

ds = xr.open_zarr(sys.argv[1])
y = ds["targets"].values.astype(np.float64)
yc = y - y.mean(axis=0)
total = float((yc ** 2).sum())
widths = ds["width"].values
out = np.full((ds.sizes["step"], ds.sizes["layer"]), np.nan)
for s in range(ds.sizes["step"]):
    block = ds["activations"].isel(step=s).values
    for j, w in enumerate(widths):
        h = block[j, :, :w].astype(np.float64)
        beta = np.linalg.lstsq(h, yc, rcond=None)[0]
        out[s, j] = 1.0 - float(((yc - h @ beta) ** 2).sum()) / total
np.save(sys.argv[2], out)
'''


# ---------------------------------------------------------------- setup (untimed)
def audit(source: Path, store: Path, *extra: object) -> None:
    subprocess.run([sys.executable, "-m", "flq_audit", source, "--steps", "all", "--out", store,
                    "--quiet", "--device", "cpu", "--threads", "1", "--overwrite", *extra],
                   check=True, env=_env(), stdout=subprocess.DEVNULL)


def store_paths(work: Path, quick: bool) -> dict[str, Path]:
    name = "small" if quick else "pythia70m"
    return {"neox": work / f"neox-{name}.zarr", "digits": work / "digits.zarr"}


def setup(work: Path, quick: bool) -> dict[str, Path]:
    """The two stores (made once per ``work`` folder and shape)."""
    work.mkdir(parents=True, exist_ok=True)
    stores = store_paths(work, quick)
    neox = stores["neox"].with_suffix("")
    if not stores["neox"].exists():
        # writes neox/ and texts.jsonl
        made(neox, lambda tmp: make_neox(tmp, SMALL if quick else PYTHIA_70M))
        audit(neox / "neox", stores["neox"], "--probe", neox / "texts.jsonl",
              "--pooling", "last")
    if not stores["digits"].exists():
        from flq_audit.recipes.digits_mlp import train

        run = work / "digits"
        made(run, lambda tmp: train(tmp, total_steps=3000, seed=0))
        audit(run, stores["digits"])
    return stores


def made(folder: Path, make: Callable[[Path], object]) -> None:
    """``make`` the folder once: into a temporary sibling renamed when complete, so that an
    interrupted setup is redone rather than taken for a finished one."""
    if folder.exists():
        return
    tmp = folder.with_name(folder.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    make(tmp)
    tmp.rename(folder)


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env.setdefault(name, "1")
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


# ---------------------------------------------------------------- measuring
def metrics_cmd(store: Path, groups: str) -> list[object]:
    return [sys.executable, "-m", "flq_audit", "metrics", store, "--metric", groups,
            "--recompute", "--json"]


def summary(values: list[float]) -> dict[str, object]:
    return {"median": round(statistics.median(values), 3),
            "range": [round(min(values), 3), round(max(values), 3)]}


def paired(a: list[object], b: list[object], repeats: int) -> dict[str, object]:
    """``a`` and ``b`` alternating (``a`` first on even pairs), each in a fresh process."""
    runs: dict[str, list[dict[str, float]]] = {"a": [], "b": []}
    for i in range(repeats):
        order = ("a", "b") if i % 2 == 0 else ("b", "a")
        for key in order:
            runs[key].append(spawn_measure(a if key == "a" else b, _env()))
    out: dict[str, object] = {}
    for measure in ("cpu_s", "wall_s", "peak_rss_mib"):
        out[measure] = {key: summary([r[measure] for r in runs[key]]) for key in runs}
        out[measure]["ratio"] = summary([x[measure] / y[measure]
                                         for x, y in zip(runs["a"], runs["b"], strict=True)])
    return out


def tl_values(store: Path) -> np.ndarray:
    import xarray as xr

    with xr.open_zarr(store) as ds:
        return np.asarray(ds["target_linearity"].values, dtype=np.float64)


def run(work: Path, quick: bool, repeats: int | None = None) -> dict:
    """Every figure of this benchmark (stores made first, untimed, under ``work``)."""
    repeats = repeats or (2 if quick else 3)
    # in a child: a parent that trained or loaded models would pass its peak RSS on to
    # every process it spawns (Linux counts the spawner's high-water mark in ``ru_maxrss``)
    subprocess.run([sys.executable, Path(__file__).resolve(), "--setup-only", "--work", work,
                    *(["--quick"] if quick else [])], check=True, env=_env())
    stores = store_paths(work, quick)
    load_before = os.getloadavg()
    result: dict[str, object] = {
        "quick": quick, "repeats": repeats, "cpus": os.cpu_count(),
        "machine": platform.platform(), "python": platform.python_version(),
        "neox_shape": SMALL if quick else PYTHIA_70M, "load_before": load_before}
    suite = paired(metrics_cmd(stores["neox"], SUITE), metrics_cmd(stores["neox"], "tl"),
                   repeats)
    result["suite_vs_tl"] = {"a": f"metrics --metric {SUITE}", "b": "metrics --metric tl",
                             **suite, "goal_cpu_ratio": 3.0}
    with tempfile.TemporaryDirectory() as tmp:
        script, values = Path(tmp) / "hand_lstsq.py", Path(tmp) / "lstsq.npy"
        script.write_text(HAND_LSTSQ)
        tl = paired(metrics_cmd(stores["digits"], "tl"),
                    [sys.executable, script, stores["digits"], values], repeats)
        difference = np.abs(tl_values(stores["digits"]) - np.load(values))
    result["tl_vs_lstsq"] = {
        "a": "metrics --metric tl", "b": "hand numpy.linalg.lstsq loop", **tl,
        "max_abs_difference": float(np.nanmax(difference)),
        "entries_over_1e-12": int((difference > 1e-12).sum()), "entries": int(difference.size),
        "goal_time_ratio": 1.0, "goal_max_abs_difference": 1e-12}
    result["load_after"] = os.getloadavg()
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the small NeoX shape")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--work", type=Path, default=ROOT / "benchmarks" / "results" / "work")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--setup-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.setup_only:
        setup(args.work, args.quick)
        return
    print(write_result(run(args.work, args.quick, args.repeats), args.out))


if __name__ == "__main__":
    main()
