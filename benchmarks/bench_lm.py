"""Benchmark the audit of a GPT-NeoX language model at pythia-160m and pythia-410m shape.

Setup (untimed): a random-init ``GPTNeoXForCausalLM`` of each shape is saved with
``save_pretrained`` as Trainer-style ``checkpoint-N/`` folders (``--steps`` of them, each
with weights shifted by 1e-3 so no two are byte-identical), float32, the 410m one in 500 MB
shards (``model.safetensors.index.json``), with a small BPE tokenizer; the probe is 16 short
texts (``--pooling last``).

Every measured audit runs in a fresh child process (``os.wait4``: wall, CPU, peak RSS), with
``--no-prefetch`` so that the phases follow each other. The runner reports no phase times,
so the child times the calls an audit makes, per step:

- ``fetch``: the source's ``fetch`` (files onto local disk: a local folder resolves paths);
- ``load``: the loader's ``read`` (transformers' ``from_pretrained``, shard by shard);
- ``replay``: the probe's forward passes (time spent inside the replay generator);
- ``grams``: forming each Gram or factor (``GramWrites.of_weight``, on the writer's threads);
- ``writes``: the writer's jobs (compressing and writing arrays) less the Gram maths.

``grams`` and ``writes`` run on the writer's two threads, partly while the probe replays:
they are thread-seconds, not wall seconds.

Also: the interpreter's RSS before the plan (baseline), the peak RSS, the checkpoint's
bytes, and the store's bytes per step by variable, for ``--grams full`` and ``compact``
(``compact`` is measured where this build wires it: the store then records ``gram_form``).

The projection (``projection`` in the JSON; ``--project`` recomputes it from ``--out``)
scales the largest measured model to pythia-160m, 1b and 6.9b × 154 steps: see
:func:`project` and :func:`laws` for the scaling laws.

Run:  python benchmarks/bench_lm.py [--quick] [--shapes 160m,410m] [--steps 2]
      [--forms full,compact] [--threads T] [--work DIR] [--out PATH] [--project]
``--quick``: a 2-layer, 128-wide model, 2 steps (a smoke run of the whole path).
Prints one JSON object and writes it to ``--out`` (default benchmarks/results/bench_lm.json).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _results import write_result

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "bench_lm.json"
SHAPES = {
    "160m": {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
             "intermediate_size": 3072},
    "410m": {"hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16,
             "intermediate_size": 4096},
    "quick": {"hidden_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
              "intermediate_size": 512, "vocab_size": 4096},
}
COMMON = {"vocab_size": 50304, "max_position_embeddings": 2048}
SHARD = {"410m": "500MB"}
WORDS = ["the", "cat", "sat", "on", "a", "mat", "while", "rain", "fell", "over", "quiet",
         "town", "and", "birds", "flew", "high", "above", "cold", "white", "snow", "wind"]


# ---------------------------------------------------------------- setup (untimed)
def make_run(work: Path, name: str, steps: int) -> Path:
    """``work/name/checkpoint-N/`` folders of one random GPT-NeoX model and ``texts.jsonl``."""
    import random

    import torch
    import transformers

    sys.path.insert(0, str(ROOT))
    from tests._helpers.hf_models import tokenizer

    run = work / name
    if (run / "texts.jsonl").is_file():
        return run
    torch.manual_seed(0)
    config = transformers.GPTNeoXConfig(**{**COMMON, **SHAPES[name]})
    model = transformers.GPTNeoXForCausalLM(config)
    tok = tokenizer()
    for index in range(steps):
        if index:
            with torch.no_grad():
                for parameter in model.parameters():
                    parameter.add_(1e-3)
        folder = run / f"checkpoint-{index * 1000}"
        model.save_pretrained(folder, max_shard_size=SHARD.get(name, "50GB"))
        tok.save_pretrained(folder)
    rng = random.Random(0)
    with (run / "texts.jsonl").open("w") as handle:
        for i in range(16):
            words = rng.sample(WORDS, rng.randint(4, 10))
            handle.write(json.dumps({"text": " ".join(words), "label": "ab"[i % 2]}) + "\n")
    return run


# ---------------------------------------------------------------- the measured child
def child(run: Path, out: Path, form: str, threads: int) -> None:
    """One audit of ``run`` with every phase timed; prints one JSON line."""
    import resource
    import threading
    from collections import defaultdict

    import torch

    from flq_audit import api
    from flq_audit.audit import loaders, step
    from flq_audit.options import CaptureOptions, RunOptions, TextProbeOptions
    from flq_audit.sources.local import LocalFolderSource
    from flq_audit.store import _gram_writes, _writer

    torch.set_num_threads(threads)
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    seconds: dict[str, float] = defaultdict(float)
    lock = threading.Lock()

    def add(phase: str, began: float) -> None:
        with lock:
            seconds[phase] += time.perf_counter() - began

    def timed(phase: str, function):
        def wrapper(*args, **kwargs):
            began = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                add(phase, began)
        return wrapper

    def timed_generator(function):
        def wrapper(*args, **kwargs):
            items = function(*args, **kwargs)
            while True:
                began = time.perf_counter()
                try:
                    item = next(items)
                except StopIteration:
                    add("replay", began)
                    return
                add("replay", began)
                yield item
        return wrapper

    original_submit = _writer.StepWriter._submit_job

    def submit(self, job):
        return original_submit(self, timed("jobs", job))

    _writer.StepWriter._submit_job = submit
    _gram_writes.GramWrites.of_weight = timed("grams", _gram_writes.GramWrites.of_weight)
    step.replay = timed_generator(step.replay)
    LocalFolderSource.fetch = timed("fetch", LocalFolderSource.fetch)
    loaders.TransformersLoader.read = timed("load", loaders.TransformersLoader.read)

    capture = CaptureOptions()
    if hasattr(capture, "grams"):
        import dataclasses

        capture = dataclasses.replace(capture, grams=form)
    began = time.perf_counter()
    plan = api.plan_audit(str(run), probe=str(run / "texts.jsonl"), out=out, capture=capture,
                          text=TextProbeOptions(pooling="last"), run=RunOptions(overwrite=True))
    plan_s = time.perf_counter() - began
    began = time.perf_counter()
    result = api.run_audit(plan, RunOptions(prefetch=False, device="cpu", threads=threads,
                                            overwrite=True))
    audit_s = time.perf_counter() - began
    seconds["writes"] = seconds.pop("jobs", 0.0) - seconds["grams"]
    steps = len(result.written)
    print("RESULT " + json.dumps({
        "baseline_rss_bytes": baseline,
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "plan_s": round(plan_s, 2), "audit_s": round(audit_s, 2), "steps": steps,
        "per_step_s": {k: round(v / max(steps, 1), 3) for k, v in sorted(seconds.items())},
        "layers": len(plan.layers), "failed": {str(k): v for k, v in result.failed.items()},
    }))


# ---------------------------------------------------------------- projection
PROJECTED = {
    "160m": {"hidden_size": 768, "num_hidden_layers": 12, "intermediate_size": 3072,
             "vocab_size": 50304},
    "1b": {"hidden_size": 2048, "num_hidden_layers": 16, "intermediate_size": 8192,
           "vocab_size": 50304},
    "6.9b": {"hidden_size": 4096, "num_hidden_layers": 32, "intermediate_size": 16384,
             "vocab_size": 50432},
}
SUITE_STEPS = 154


def matrices(shape: dict) -> list[tuple[int, int]]:
    """``(d_out, d_in)`` of every captured matrix of a GPT-NeoX model (each block's query-
    key-value, attention output, MLP up and down projections, and the unembedding)."""
    d, f = shape["hidden_size"], shape["intermediate_size"]
    block = [(3 * d, d), (d, d), (f, d), (d, f)]
    return block * shape["num_hidden_layers"] + [(shape["vocab_size"], d)]


def laws(shape: dict) -> dict[str, float]:
    """What scales a step's phases: weight bytes (float32), forward flops per token, Gram
    flops and stored Gram bytes (float32) with full and compact Grams."""
    d, v = shape["hidden_size"], shape["vocab_size"]
    mats = matrices(shape)
    weights = 4 * (sum(o * i for o, i in mats) + v * d)  # + the input embedding
    dense = [(o, i) for o, i in mats if i <= o]
    return {
        "weight_bytes": weights,
        "forward_flops": 2 * sum(o * i for o, i in mats[:-1]),  # the replay stops early
        "gram_flops_full": sum(2 * o * i * i for o, i in mats),
        "gram_flops_compact": sum(2 * o * i * i for o, i in dense),
        "gram_bytes_full": sum(4 * i * i for _, i in mats),
        "gram_bytes_compact": sum(4 * (i * i if i <= o else o * i) for o, i in mats),
    }


def project(measured: dict, name: str, workers: tuple[int, ...] = (4, 16)) -> dict:
    """Per-step and whole-suite figures for the shape ``name`` from a measured audit: each
    phase's thread-seconds scaled by its law (load by weight bytes, replay by forward flops,
    Grams by Gram flops, writes by stored Gram bytes), and the measured wall time per step
    scaled by the ratio of those sums (so the measured shape projects onto itself). The plan
    (building the architecture once, random init) is added once, scaled by weight bytes."""
    base = laws({**COMMON, **SHAPES[measured["name"]]})
    target = laws(PROJECTED[name])
    phases = measured["per_step_s"]
    wall_step = measured["audit_s"] / measured["steps"]
    plan_s = measured["plan_s"] * target["weight_bytes"] / base["weight_bytes"]
    out: dict = {"shape": PROJECTED[name], "weight_bytes": target["weight_bytes"],
                 "plan_s": round(plan_s, 1)}
    for form in ("full", "compact"):
        scaled = (phases["load"] * target["weight_bytes"] / base["weight_bytes"]
                  + phases["replay"] * target["forward_flops"] / base["forward_flops"]
                  + phases["grams"] * target[f"gram_flops_{form}"] / base["gram_flops_full"]
                  + phases["writes"] * target[f"gram_bytes_{form}"] / base["gram_bytes_full"])
        step = wall_step * scaled / sum(phases[k] for k in ("load", "replay", "grams", "writes"))
        suite = plan_s + step * SUITE_STEPS
        out[form] = {"step_s": round(step, 1), "suite_h": round(suite / 3600, 2),
                     **{f"suite_h_{n}_workers": round((plan_s + step * SUITE_STEPS / n) / 3600, 2)
                        for n in workers},
                     "gram_bytes_per_step": target[f"gram_bytes_{form}"],
                     "gram_bytes_suite": target[f"gram_bytes_{form}"] * SUITE_STEPS}
    return out


# ---------------------------------------------------------------- helpers
def checkpoint_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.glob("*.safetensors"))


def store_bytes_per_step(store: Path, steps: int) -> dict[str, int]:
    """On-disk bytes of each variable of the store, divided by the number of steps."""
    sizes = {}
    for item in sorted(store.iterdir()):
        if item.is_dir() and not item.name.startswith((".", "_")):
            total = sum(p.stat().st_size for p in item.rglob("*") if p.is_file())
            if total > 1 << 16:  # coordinates and bookkeeping are left out
                sizes[item.name] = total // steps
    return sizes


def has_gram_form(store: Path) -> bool:
    return (store / "gram_form").is_dir()


def measure(run: Path, store: Path, form: str, threads: int) -> dict:
    cmd = [sys.executable, __file__, "--child", str(run), "--store", str(store),
           "--forms", form, "--threads", str(threads)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    began = time.perf_counter()
    with tempfile.TemporaryFile("w+") as stdout:
        pid = os.posix_spawn(cmd[0], cmd, env, file_actions=[
            (os.POSIX_SPAWN_DUP2, stdout.fileno(), 1),
            (os.POSIX_SPAWN_OPEN, 2, os.devnull, os.O_WRONLY, 0)])
        _, status, usage = os.wait4(pid, 0)
        stdout.seek(0)
        lines = [x for x in stdout.read().splitlines() if x.startswith("RESULT ")]
    if os.waitstatus_to_exitcode(status) != 0 or not lines:
        raise RuntimeError(f"{' '.join(cmd)} exited {os.waitstatus_to_exitcode(status)}")
    result = json.loads(lines[-1].removeprefix("RESULT "))
    result.update(wall_s=round(time.perf_counter() - began, 2),
                  cpu_s=round(usage.ru_utime + usage.ru_stime, 2),
                  peak_rss_mib=round(usage.ru_maxrss / 1024, 1))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a tiny model (smoke run)")
    parser.add_argument("--shapes", default="160m,410m")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--forms", default="full,compact")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--work", type=Path, default=None, help="keep the setup here")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--child", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--store", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--setup-only", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--project", action="store_true",
                        help="only (re)compute the projection of the figures in --out")
    args = parser.parse_args()
    if args.project:
        result = json.loads(args.out.read_text())
        with_projection(result)
        print(write_result(result, args.out))
        return
    if args.child is not None:
        child(args.child, args.store, args.forms, args.threads)
        return
    shapes = ["quick"] if args.quick or args.shapes == "quick" else args.shapes.split(",")
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-lm-"))
    if args.setup_only:
        for name in shapes:
            make_run(work, name, args.steps)
        return
    # the setup runs in a child: a spawned process inherits its spawner's RSS high-water
    # mark in ru_maxrss, so this process stays small
    subprocess.run([sys.executable, __file__, "--setup-only", "--work", str(work),
                    "--shapes", ",".join(shapes), "--steps", str(args.steps)], check=True,
                   env={**os.environ, "PYTHONPATH": str(ROOT)})
    result: dict = {"threads": args.threads, "steps": args.steps, "cpus": os.cpu_count(),
                    "probe_texts": 16, "prefetch": False, "models": {}}
    for name in shapes:
        run = work / name
        first = sorted(run.glob("checkpoint-*"))[0]
        entry: dict = {"shape": {**COMMON, **SHAPES[name]},
                       "checkpoint_bytes": checkpoint_bytes(first),
                       "shards": len(list(first.glob("*.safetensors")))}
        for form in args.forms.split(","):
            store = work / f"{name}-{form}.zarr"
            measured = measure(run, store, form, args.threads)
            if form != "full" and not has_gram_form(store):
                entry[form] = "not wired in this build (the store records no gram_form)"
                continue
            measured["store_bytes_per_step"] = store_bytes_per_step(store, args.steps)
            entry[form] = measured
        result["models"][name] = entry
        print(write_result(result, args.out))
    with_projection(result)
    print(write_result(result, args.out))


def with_projection(result: dict) -> None:
    """Add the projection from the largest model measured with ``--grams full``."""
    largest = list(result["models"])[-1]
    if isinstance(result["models"][largest].get("full"), dict):
        measured = {"name": largest, **result["models"][largest]["full"]}
        result["projection"] = {"from": f"{largest}, --grams full, measured above",
                                "suite_steps": SUITE_STEPS,
                                **{n: project(measured, n) for n in PROJECTED}}


if __name__ == "__main__":
    main()
