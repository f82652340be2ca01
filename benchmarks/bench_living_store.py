"""Benchmark adding steps to a store against one audit of every step.

Setup (untimed): train the digits-MLP recipe once into a temp dir (its safetensors
checkpoints, probe and model spec). Then, in this process with imports done and one untimed
warm-up:

- ``one-shot``: ``api.audit(run, steps="all")`` into a new store;
- ``coarse+fill``: ``api.audit(run, steps="log:4")`` then ``api.audit(run, steps="all")``
  into one new store (the second run skips the 4 done steps);
- ``grow``: a folder holding the first half of the checkpoints audited, then the rest copied
  in and audited again (the step axis grows), against a one-shot of the full folder.

Each side is timed ``--repeats`` times, the order alternating; the median, min and max are
printed, and ``ratio = coarse+fill / one-shot`` (ideal: 1 plus one extra plan). The stores
are compared bit for bit.

Run:  python benchmarks/bench_living_store.py [--repeats N] [--out PATH]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path,
                        default=ROOT / "benchmarks" / "results" / "bench_living_store.json")
    args = parser.parse_args()

    import torch

    from flq_audit import api
    from flq_audit.options import RunOptions
    from flq_audit.recipes import digits_mlp
    from tests._helpers.stores import store_differences

    torch.set_num_threads(1)
    work = Path(tempfile.mkdtemp(prefix="bench-living-"))
    run = digits_mlp.train(work / "run")
    steps = [int(p.stem.split("_")[1]) for p in run.glob("step_*.safetensors")]
    half = sorted(steps)[: len(steps) // 2]
    options = RunOptions(batch_size=512, threads=1)

    def audit(source: Path, store: Path, selection: str) -> None:
        api.audit(str(source), steps=selection, out=store, run=options)

    def fresh(name: str) -> Path:
        store = work / name
        shutil.rmtree(store, ignore_errors=True)
        return store

    def one_shot() -> None:
        audit(run, fresh("one.zarr"), "all")

    def coarse_fill() -> None:
        store = fresh("coarse.zarr")
        audit(run, store, "log:4")
        audit(run, store, "all")

    growing = work / "growing"

    def grow() -> None:
        shutil.rmtree(growing, ignore_errors=True)
        growing.mkdir()
        for name in ("model_spec.json", "probe.npz", *(f"step_{s}.safetensors" for s in half)):
            shutil.copy(run / name, growing / name)
        store = fresh("grown.zarr")
        audit(growing, store, "all")
        for step in steps:
            shutil.copy(run / f"step_{step}.safetensors", growing / f"step_{step}.safetensors")
        audit(growing, store, "all")

    one_shot(), coarse_fill()  # warm-up
    times: dict[str, list[float]] = {"one-shot": [], "coarse+fill": [], "grow": []}
    for repeat in range(args.repeats):
        order = [("one-shot", one_shot), ("coarse+fill", coarse_fill), ("grow", grow)]
        for name, fn in order if repeat % 2 == 0 else order[::-1]:
            times[name].append(_timed(fn))
    same = not store_differences(work / "one.zarr", work / "coarse.zarr")
    summary = {name: {"median_s": statistics.median(v), "min_s": min(v), "max_s": max(v)}
               for name, v in times.items()}
    base = summary["one-shot"]["median_s"]
    result = {"checkpoints": len(steps), "repeats": args.repeats, "times": summary,
              "ratio_coarse_fill": summary["coarse+fill"]["median_s"] / base,
              "ratio_grow": summary["grow"]["median_s"] / base,
              "coarse_fill_equals_one_shot": same}
    text = json.dumps(result, indent=2)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text + "\n")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
