"""Benchmark local workers: scaling with N processes where fetching dominates, and the
local 2-core case.

The checkpoints are bench_scale's GPT-NeoX sequence (6 Trainer-style ``checkpoint-N/``
folders, 512 short texts, ``--pooling last``; quick: its small 2-layer, 128-wide shape, else
pythia-70m shape), made once (untimed). Every measured run is ``python -m flq_audit ...`` in
a fresh subprocess with its default threads (wall time, and user+sys CPU of it and the
worker processes it waited for, from ``os.wait4``). Runs of one section alternate between
its configurations, ``repeats`` rounds, reported as median [min, max]; speed-ups are the
medians of the paired (same round) ratios.

a. ``hub``: the sequence served by a loopback Hub (olah) behind bench_scale's
   :class:`DelayProxy`, which sends each weight file over ``delay`` seconds (simulated
   fetch latency; a fresh HF cache per run): sequential (N = 1), ``--workers 2`` and
   ``--workers 4``; efficiency = speed-up / N;
b. ``local``: the local folders (no latency) sequentially and with ``--workers 2`` (and
   ``--workers auto``) on this machine's cores.

Run:  python benchmarks/bench_workers.py [--quick] [--repeats N] [--delay S] [--work DIR]
      [--code DIR] [--out PATH]
``--code`` measures the flq_audit package of another checkout (a baseline). Prints one JSON
object and writes it to ``--out`` (default benchmarks/results/bench_workers.json).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from _results import write_result
from bench_scale import NEOX_STEPS, PYTHIA_70M, SMALL, DelayProxy, make_neox

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "bench_workers.json"
REPO = "EleutherAI/pythia-bench"
#: Seconds over which the proxy sends each weight file (one per step).
DELAY_S = {"quick": 2.0, "full": 4.0}


# ---------------------------------------------------------------- setup (untimed)
def setup(work: Path, quick: bool) -> None:
    """The neox sequence and its Hub repository (in a child process: this one stays small)."""
    if not (work / "neox").exists():
        make_neox(work, SMALL if quick else PYTHIA_70M)
    sys.path.insert(0, str(ROOT))
    from tests._helpers.hub import OlahServer, build_git_repo

    repo = OlahServer(work / "olah").repo_path(REPO)
    if not repo.exists():
        revisions = {f"step{s}": {p.name: p.read_bytes()
                                  for p in (work / "neox" / f"checkpoint-{s}").iterdir()}
                     for s in NEOX_STEPS}
        build_git_repo(repo, {"main": revisions[f"step{max(NEOX_STEPS)}"], **revisions})


# ---------------------------------------------------------------- measuring
def measure(cmd: list[str], env: dict[str, str]) -> dict[str, float]:
    """Wall seconds and CPU seconds (user+sys, with the worker processes it waited for) of
    one run, in the folder of the checkout it measures (``-m`` imports from there first)."""
    start = time.perf_counter()
    process = subprocess.Popen(cmd, env=env, cwd=env["PYTHONPATH"].split(os.pathsep)[0],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - start
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {process.returncode}")
    return {"wall_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime}


def summary(values: list[float]) -> dict[str, object]:
    return {"median": round(statistics.median(values), 3),
            "range": [round(min(values), 3), round(max(values), 3)]}


def alternate(configs: dict[str, Callable[[int], tuple[list[str], dict[str, str]]]],
              repeats: int) -> dict[str, dict[str, object]]:
    """Each configuration once per round, in turn; wall and CPU as median [min, max]."""
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in configs}
    for i in range(repeats):
        for name, make in configs.items():
            runs[name].append(measure(*make(i)))
    return {name: {"wall_s": summary([r["wall_s"] for r in rs]),
                   "cpu_s": summary([r["cpu_s"] for r in rs]),
                   "walls": [round(r["wall_s"], 3) for r in rs]} for name, rs in runs.items()}


def speedups(result: dict[str, dict[str, object]], base: str) -> dict[str, dict[str, object]]:
    """Paired speed-up of every configuration over ``base`` (its wall / theirs, per round)."""
    out = {}
    for name, res in result.items():
        pairs = [b / w for b, w in zip(result[base]["walls"], res["walls"], strict=True)]
        out[name] = summary(pairs)
    return out


def cli(*args: object) -> list[str]:
    return [sys.executable, "-m", "flq_audit", *map(str, args), "--quiet", "--device", "cpu",
            "--overwrite"]


def base_env(code: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    env["PYTHONPATH"] = os.pathsep.join([str(code), str(ROOT)])
    return env


# ---------------------------------------------------------------- sections
def hub_section(work: Path, code: Path, delay: float, repeats: int) -> dict[str, object]:
    sys.path.insert(0, str(ROOT))
    from tests._helpers.hub import OlahServer, olah_cli

    if olah_cli() is None:
        return {"skipped": "olah is not installed"}
    server = OlahServer(work / "olah")
    upstream = server.start()
    try:
        proxy = DelayProxy(upstream, delay=delay)
        probe, stores = work / "texts.jsonl", work / "stores"

        def config(name: str, *extra: object) -> Callable[[int], tuple[list[str], dict]]:
            def make(i: int) -> tuple[list[str], dict[str, str]]:
                home = work / f"hf-{name}-{i}"
                shutil.rmtree(home, ignore_errors=True)
                env = {**base_env(code), "HF_ENDPOINT": proxy.endpoint, "HF_HOME": str(home),
                       "HF_HUB_CACHE": str(home / "hub"), "HF_HUB_DISABLE_TELEMETRY": "1",
                       "HF_HUB_DOWNLOAD_TIMEOUT": "300", "HF_HUB_ETAG_TIMEOUT": "60"}
                return cli(REPO, "--steps", "all", "--probe", probe, "--pooling", "last",
                           *extra, "--out", stores / f"hub-{name}.zarr"), env
            return make

        runs = alternate({"sequential": config("n1"), "workers2": config("n2", "--workers", 2),
                          "workers4": config("n4", "--workers", 4)}, repeats)
    finally:
        server.stop()
    ups = speedups(runs, "sequential")
    lanes = {"sequential": 1, "workers2": 2, "workers4": 4}
    return {"delay_per_weight_file_s": delay, "runs": runs, "speedup": ups,
            "efficiency": {name: round(float(ups[name]["median"]) / n  # type: ignore[arg-type]
                                       , 3) for name, n in lanes.items()}}


def local_section(work: Path, code: Path, repeats: int) -> dict[str, object]:
    neox, probe, stores = work / "neox", work / "texts.jsonl", work / "stores"

    def config(name: str, *extra: object) -> Callable[[int], tuple[list[str], dict]]:
        return lambda i: (cli(neox, "--probe", probe, "--pooling", "last", *extra,
                              "--out", stores / f"local-{name}.zarr"), base_env(code))

    configs = {"sequential": config("n1"), "workers2": config("n2", "--workers", 2)}
    if (Path(code) / "flq_audit" / "audit" / "_lanes.py").exists():  # --workers auto is new
        configs["auto"] = config("auto", "--workers", "auto")
    runs = alternate(configs, repeats)
    return {"cores": len(os.sched_getaffinity(0)), "runs": runs,
            "speedup": speedups(runs, "sequential")}


def run(work: Path, quick: bool, *, repeats: int | None = None, delay: float | None = None,
        code: Path = ROOT) -> dict[str, object]:
    """Both sections on the sequence kept in ``work`` (made there once); the result."""
    work.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, __file__, "--setup-only", "--work", str(work),
                    *(["--quick"] if quick else [])], check=True)
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(Path(code) / "flq_audit")],
                   check=True, stdout=subprocess.DEVNULL)
    repeats = repeats or (2 if quick else 3)
    delay = DELAY_S["quick" if quick else "full"] if delay is None else delay
    result: dict[str, object] = {
        "quick": quick, "repeats": repeats, "neox_shape": SMALL if quick else PYTHIA_70M,
        "steps": len(NEOX_STEPS), "cpus": os.cpu_count(), "machine": platform.processor()
        or platform.machine(), "code": str(code), "load_average": {"before": os.getloadavg()}}
    result["hub"] = hub_section(work, code, delay, repeats)
    result["load_average"]["after_hub"] = os.getloadavg()  # type: ignore[index]
    result["local"] = local_section(work, code, repeats)
    result["load_average"]["after"] = os.getloadavg()  # type: ignore[index]
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the small NeoX shape")
    parser.add_argument("--repeats", type=int, default=None, help="rounds (2 quick, 3 full)")
    parser.add_argument("--delay", type=float, default=None, help="seconds per weight file")
    parser.add_argument("--work", type=Path, default=None, help="keep the setup here")
    parser.add_argument("--code", type=Path, default=ROOT, help="the checkout to measure")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--setup-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.setup_only:
        return setup(args.work, args.quick)
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-workers-"))
    try:
        result = run(work, args.quick, repeats=args.repeats, delay=args.delay,
                     code=args.code.resolve())
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(result, indent=1))
    write_result(result, args.out)


if __name__ == "__main__":
    main()
