"""Per-step overhead at transformer scale: the audit against the hand loop that does its work.

The sequence is ``bench_scale.py``'s ``neox`` one (GPT-NeoX at pythia-70m shape, 6
Trainer-style checkpoints, 512 short texts, ``--pooling last``; ``quick``: its 2-layer,
128-wide model). The baseline is what a user would write for the same values: a forward
pre-hook on every ``nn.Linear`` keeping each text's last real token, the forward stopped at
the input of the last captured layer (``lm_head``: the logits are never needed), and each
layer's Gram as dense float64 ``WᵀW`` saved with ``np.save`` next to its rows.

Three commands run in fresh subprocesses, alternating (A, B, C, A, B, C, ...), each measured
by ``os.wait4`` (user+sys CPU and peak RSS of that process alone):

- ``audit``: ``flq-audit audit`` with its defaults (compact Grams: the weight itself where it
  has fewer rows than columns, e.g. ``dense_4h_to_h``);
- ``audit_full``: the same with ``--grams full`` (dense WᵀW of every layer, as the loop);
- ``hand``: the loop above.

Ratios are paired (each repeat's audit over the same repeat's loop), as median and [min, max].

Run:  python benchmarks/bench_step_overhead.py [--quick] [--repeats N] [--work DIR]
Writes benchmarks/results/bench_step_overhead.json; ``run(work, quick)`` returns the same dict.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _results import write_result
from bench_scale import PYTHIA_70M, ROOT, SMALL, cli, spawn_measure

OUT = ROOT / "benchmarks" / "results" / "bench_step_overhead.json"

HAND_LOOP_TO_LAST = r'''
import json, sys, numpy as np, torch, transformers
from pathlib import Path
from torch import nn
source, probe, out, threads = sys.argv[1:5]
torch.set_num_threads(int(threads))
out = Path(out); out.mkdir(parents=True, exist_ok=True)
class Stop(Exception):
    pass
texts = [json.loads(line)["text"] for line in open(probe)]
folders = sorted(Path(source).glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
tok = transformers.AutoTokenizer.from_pretrained(str(folders[0]))
batch = tok(texts, padding=True, truncation=True, max_length=128, return_tensors="pt")
last = batch["attention_mask"].sum(1) - 1
for folder in folders:
    model = transformers.AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
    linears = {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    final, rows = list(linears)[-1], {}
    def make(name):
        def hook(module, args):
            x = args[0].detach()
            rows[name] = x[torch.arange(x.shape[0]), last].float().numpy().copy()
            if name == final:
                raise Stop
        return hook
    handles = [m.register_forward_pre_hook(make(n)) for n, m in linears.items()]
    try:
        with torch.no_grad():
            model(**batch, use_cache=False)
    except Stop:
        pass
    for name, module in linears.items():
        w = module.weight.detach().double()
        np.save(out / f"{folder.name}-{name}-gram.npy", (w.t() @ w).numpy())
        np.save(out / f"{folder.name}-{name}-acts.npy", rows[name])
    for handle in handles:
        handle.remove()
    del model, linears, rows, handles
'''


def prepare(work: Path, quick: bool) -> None:
    """Make the checkpoints (untimed, in a child: its peak RSS must not reach the runs) and
    compile the package (an editable checkout may not have its bytecode)."""
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_scale.py"), "--setup-only",
                    "--work", str(work), *(["--small"] if quick else [])], check=True,
                   stdout=subprocess.DEVNULL)
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(ROOT / "flq_audit")],
                   check=True, stdout=subprocess.DEVNULL)


def commands(work: Path, threads: int, before: Path | None = None) -> dict[str, list[str]]:
    """The measured commands (``audit_before``: the audit of the package under ``before``)."""
    neox, probe = work / "neox", work / "texts.jsonl"
    audit = [*map(str, (neox, "--probe", probe, "--pooling", "last"))]
    stores = work / "stores"
    found = {
        "audit": cli(*audit, "--out", stores / "overhead.zarr", threads=threads),
        "audit_full": cli(*audit, "--grams", "full", "--out", stores / "overhead-full.zarr",
                          threads=threads),
        "hand": [sys.executable, "-c", HAND_LOOP_TO_LAST, str(neox), str(probe),
                 str(work / "hand-to-last"), str(threads)],
    }
    if before is not None:
        found["audit_before"] = cli(*audit, "--out", stores / "overhead-before.zarr",
                                    threads=threads)
    return found


def environment(threads: int, package_root: Path) -> dict[str, str]:
    """A measured process's environment: its threads and the package it imports."""
    return {**os.environ, "OMP_NUM_THREADS": str(threads),
            "PYTHONPATH": os.pathsep.join([str(package_root), os.environ.get("PYTHONPATH", "")])}


def summary(values: list[float]) -> dict[str, object]:
    """Median and [min, max] of ``values``, rounded."""
    return {"median": round(statistics.median(values), 3),
            "range": [round(min(values), 3), round(max(values), 3)]}


def run(work: Path, quick: bool, repeats: int | None = None, threads: int = 1,
        before: Path | None = None) -> dict:
    """Audit vs hand-loop CPU and peak RSS ratios (paired, alternating, fresh subprocesses);
    ``before``: a folder holding an earlier ``flq_audit`` package, measured alongside."""
    work.mkdir(parents=True, exist_ok=True)
    prepare(work, quick)
    repeats = repeats or (2 if quick else 3)
    cmds = commands(work, threads, before)
    load_before = os.getloadavg()
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in cmds}
    for _ in range(repeats):
        for name, cmd in cmds.items():
            root = before if name == "audit_before" and before is not None else ROOT
            runs[name].append(spawn_measure(cmd, environment(threads, root)))
    result: dict[str, object] = {
        "quick": quick, "neox_shape": SMALL if quick else PYTHIA_70M, "repeats": repeats,
        "threads": threads, "cpus": os.cpu_count(),
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
    }
    for name, measured in runs.items():
        result[name] = {key: summary([m[key] for m in measured])
                        for key in ("cpu_s", "peak_rss_mib", "wall_s")}
    for name in [n for n in ("audit", "audit_full", "audit_before") if n in runs]:
        result[f"{name}_over_hand"] = {
            key: summary([a[key] / h[key] for a, h in zip(runs[name], runs["hand"], strict=True)])
            for key in ("cpu_s", "peak_rss_mib")}
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the small NeoX model")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--work", type=Path, default=Path("/tmp/bench-step-overhead"))
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--before", type=Path, default=None,
                        help="a folder holding an earlier flq_audit package to measure too")
    args = parser.parse_args(argv)
    result = run(args.work, args.quick, args.repeats, args.threads, args.before)
    print(write_result(result, args.out))


if __name__ == "__main__":
    main()
