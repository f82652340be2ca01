"""One audit step of a GPT-NeoX model at pythia-160m shape: the input of the cluster estimate.

Two Trainer-style ``checkpoint-N/`` folders of a random GPT-NeoX model at pythia-160m shape
(12 layers, width 768, vocabulary 50,304) are made once; 512 short texts are audited with
``--pooling last``, once with one step and once with both, each in a fresh subprocess. One
step costs the difference (wall and user+sys CPU time); the one-step run minus one step is
the audit's fixed cost. ``docs/cluster.md`` applies the estimate's formula to these figures.

Run:  python benchmarks/bench_step.py [--threads T] [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_scale  # the model and text helpers

PYTHIA_160M = {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
               "intermediate_size": 3072, "vocab_size": 50304, "max_position_embeddings": 2048}
STEPS = (1000, 2000)


def make_sequence(work: Path) -> tuple[Path, Path]:
    run = work / "neox160"
    if not run.exists():
        for step in STEPS:
            folder = run / f"checkpoint-{step}"
            folder.mkdir(parents=True)
            for name, data in bench_scale.neox_files(PYTHIA_160M, seed=step).items():
                (folder / name).write_bytes(data)
    rng = random.Random(0)
    probe = work / "texts.jsonl"
    with probe.open("w") as handle:
        for i in range(512):
            words = rng.sample(bench_scale.WORDS, rng.randint(4, 10))
            handle.write(json.dumps({"text": " ".join(words), "label": "ab"[i % 2]}) + "\n")
    return run, probe


def timed(cmd: list[str]) -> dict[str, float]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(cmd, check=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return {"wall_s": time.perf_counter() - start,
            "cpu_s": (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--work", type=Path, default=None)
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-step-"))
    work.mkdir(parents=True, exist_ok=True)
    run, probe = make_sequence(work)
    runs = {}
    for steps in (str(STEPS[0]), "all"):
        runs[steps] = timed([sys.executable, "-m", "flq_audit", str(run), "--probe", str(probe),
                             "--pooling", "last", "--steps", steps, "--out",
                             str(work / f"steps-{steps}.zarr"), "--overwrite", "--quiet",
                             "--device", "cpu", "--threads", str(args.threads), "--no-prefetch"])
    one, both = runs[str(STEPS[0])], runs["all"]
    result = {"runs": runs, "per_step_cpu_s": both["cpu_s"] - one["cpu_s"],
              "per_step_wall_s": both["wall_s"] - one["wall_s"],
              "fixed_cpu_s": 2 * one["cpu_s"] - both["cpu_s"],
              "checkpoint_mib": sum(p.stat().st_size
                                    for p in (run / f"checkpoint-{STEPS[0]}").iterdir()) / 2**20,
              "load_average": os.getloadavg()}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
