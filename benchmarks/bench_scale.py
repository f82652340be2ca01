"""Benchmark one machine's audit: workers, prefetching, peak memory, overhead over a bare loop.

Two checkpoint sequences are made once (untimed):

- ``digits×8``: the digits-MLP recipe (13 safetensors checkpoints) with its probe tiled ×8;
- ``neox``: a GPT-NeoX model at pythia-70m shape (random init from a transformers config;
  ``--small``: a 2-layer, 128-wide one), 6 Trainer-style ``checkpoint-N/`` folders, 512
  short texts, ``--pooling last``.

Every measured run is ``python -m flq_audit ...`` in a fresh subprocess (wall time, its own
user+sys CPU time and peak RSS from ``os.wait4``), ``--threads`` torch threads, ``--repeats``
times, reported as median and [min, max]. Sections, each a ratio measured in this one run:

a. ``--workers 2`` (two single-threaded worker processes) vs sequential on both sequences,
   and on the neox sequence with 2,048 texts (``--repeats`` / 2 times), where the forward
   pass dominates a step;
b. the neox sequence served by a loopback Hub (olah) behind a proxy that sends each weight
   file slowly, so that fetching it takes one step's local wall time (6-step minus 1-step
   ``--no-prefetch`` audit, over 5): fetch ≈ compute. Prefetching vs ``--no-prefetch``
   (fresh HF cache per run); goal ≥ 1.6×;
c. peak RSS with prefetching / without (local neox sequence); goal ≤ 1.3;
d. CPU time of the audit / a hand-written loop (forward pre-hooks on every ``nn.Linear``,
   float64 Grams, ``np.save`` of each array) on the same checkpoints; goal ≤ 1.2 (neox) and
   ≤ 1.5 (digits). For the digits sequence also the audit with every store write replaced
   by a no-op (what compressing and writing the store costs).

The setup runs in a child process, so that this process stays small (a spawned process
inherits its spawner's RSS high-water mark in ``ru_maxrss``).

Run:  python benchmarks/bench_scale.py [--small] [--repeats N] [--threads T]
      [--sections a,b,c,d] [--work DIR] [--out PATH]
Prints one JSON object and writes it to ``--out`` (default benchmarks/results/bench_scale.json).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from _results import write_result

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "bench_scale.json"
NEOX_STEPS = (0, 1000, 2000, 3000, 4000, 5000)
PYTHIA_70M = {"hidden_size": 512, "num_hidden_layers": 6, "num_attention_heads": 8,
              "intermediate_size": 2048, "vocab_size": 50304, "max_position_embeddings": 2048}
SMALL = {"hidden_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
         "intermediate_size": 512, "vocab_size": 4096, "max_position_embeddings": 256}
WORDS = ["the", "cat", "sat", "on", "a", "mat", "while", "rain", "fell", "over", "quiet",
         "town", "and", "birds", "flew", "high", "above", "cold", "white", "snow", "wind"]


# ---------------------------------------------------------------- setup (untimed)
def make_digits(work: Path) -> Path:
    import numpy as np

    from flq_audit.recipes.digits_mlp import train

    run = work / "digits"
    train(run, total_steps=3000, seed=0)
    probe = np.load(run / "probe.npz")
    rng = np.random.default_rng(0)
    inputs = np.concatenate([probe["inputs"] + rng.normal(0, 0.01, probe["inputs"].shape)
                             for _ in range(8)]).astype(np.float32)
    tiled = work / "digits8"
    tiled.mkdir()
    for item in run.iterdir():
        if item.name != "probe.npz":
            (tiled / item.name).symlink_to(item)
    np.savez(tiled / "probe.npz", inputs=inputs, targets=np.tile(probe["targets"], 8),
             num_classes=probe["num_classes"])
    return tiled


def neox_files(shape: dict, seed: int) -> dict[str, bytes]:
    """``save_pretrained`` files of a random GPT-NeoX model and a small BPE tokenizer."""
    import torch
    import transformers

    sys.path.insert(0, str(ROOT))
    from tests._helpers.hf_models import tokenizer

    torch.manual_seed(seed)
    model = transformers.GPTNeoXForCausalLM(transformers.GPTNeoXConfig(**shape))
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        tokenizer().save_pretrained(tmp)
        return {p.name: p.read_bytes() for p in Path(tmp).iterdir() if p.is_file()}


def make_neox(work: Path, shape: dict) -> None:
    run = work / "neox"
    for step in NEOX_STEPS:
        files = neox_files(shape, seed=step)
        folder = run / f"checkpoint-{step}"
        folder.mkdir(parents=True)
        for name, data in files.items():
            (folder / name).write_bytes(data)
    write_texts(work / "texts.jsonl", 512)


def write_texts(path: Path, n: int) -> None:
    """``n`` short texts of 4 to 10 words, labelled a/b (the same first 512 for any n)."""
    import random

    rng = random.Random(0)
    with path.open("w") as handle:
        for i in range(n):
            words = rng.sample(WORDS, rng.randint(4, 10))
            handle.write(json.dumps({"text": " ".join(words), "label": "ab"[i % 2]}) + "\n")


# ---------------------------------------------------------------- one measured process
def spawn_measure(cmd: list, env: dict[str, str] | None = None) -> dict[str, float]:
    """Wall seconds, CPU seconds (user+sys) and peak RSS (MiB) of one subprocess, from its
    own ``os.wait4`` rusage (not the children's running maximum)."""
    cmd = [str(part) for part in cmd]
    start = time.perf_counter()
    pid = os.posix_spawn(cmd[0], cmd, env if env is not None else dict(os.environ),
                         file_actions=[(os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0)])
    _, status, usage = os.wait4(pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {os.waitstatus_to_exitcode(status)}")
    return {"wall_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime,
            "peak_rss_mib": usage.ru_maxrss / 1024}


def repeated(make_cmd, repeats: int, env_for=None) -> dict[str, object]:
    runs = []
    for i in range(repeats):
        cmd = make_cmd(i)
        runs.append(spawn_measure(cmd, env_for(i) if env_for else None))
    out: dict[str, object] = {}
    for key in ("wall_s", "cpu_s", "peak_rss_mib"):
        values = [r[key] for r in runs]
        out[key] = round(statistics.median(values), 3)
        out[key + "_range"] = [round(min(values), 3), round(max(values), 3)]
    return out


def ratio(a: dict, b: dict, key: str) -> float:
    return round(float(a[key]) / float(b[key]), 3)  # type: ignore[arg-type]


# ---------------------------------------------------------------- loopback Hub with a delay
class DelayProxy:
    """Forward every request to ``upstream``; send each weight file over ``delay`` s."""

    def __init__(self, upstream: str, delay: float) -> None:
        host, port = upstream.removeprefix("http://").split(":")
        self.delay = delay
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _forward(self, method: str) -> None:
                slow = method == "GET" and "/resolve/" in self.path and self.path.endswith(
                    ".safetensors")
                conn = http.client.HTTPConnection(host, int(port), timeout=120)
                headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
                conn.request(method, self.path, headers=headers)
                resp = conn.getresponse()
                body = resp.read()
                self.send_response(resp.status)
                for key, value in resp.getheaders():
                    if key.lower() in ("transfer-encoding", "connection") or (
                            key.lower() == "content-length" and method != "HEAD"):
                        continue
                    if key.lower() == "location":
                        value = value.replace(f"{host}:{port}", proxy.netloc)
                    self.send_header(key, value)
                if method != "HEAD":
                    self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if method != "HEAD":  # a slow link: the body trickles in over `delay` s
                    pieces = 50 if slow else 1
                    size = max(1, -(-len(body) // pieces))
                    for first in range(0, len(body), size):
                        if slow:
                            time.sleep(proxy.delay / pieces)
                        self.wfile.write(body[first:first + size])
                conn.close()

            def do_GET(self) -> None:
                self._forward("GET")

            def do_HEAD(self) -> None:
                self._forward("HEAD")

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.netloc = f"127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def endpoint(self) -> str:
        return f"http://{self.netloc}"


# ---------------------------------------------------------------- the hand-written loop
HAND_LOOP = r'''
import json, sys, numpy as np, torch
from pathlib import Path
from torch import nn
kind, source, probe, out, threads = sys.argv[1:6]
torch.set_num_threads(int(threads))
out = Path(out); out.mkdir(parents=True, exist_ok=True)
def hooks(model, last):
    captured = {}
    def make(name):
        def hook(module, args):
            x = args[0].detach()
            rows = x[torch.arange(x.shape[0]), last] if last is not None else x.reshape(x.shape[0], -1)
            captured.setdefault(name, []).append(rows.float().numpy().copy())
        return hook
    linears = {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    for n, m in linears.items():
        m.register_forward_pre_hook(make(n))
    return linears, captured
def finish(step, linears, captured):
    for name, module in linears.items():
        w = module.weight.detach().double()
        np.save(out / f"{step}-{name}-gram.npy", (w.t() @ w).numpy())
        np.save(out / f"{step}-{name}-acts.npy", np.concatenate(captured[name]))
if kind == "digits":
    from safetensors.torch import load_file
    from flq_audit.models import build_from_spec
    spec = json.loads((Path(source) / "model_spec.json").read_text())
    inputs = torch.from_numpy(np.load(probe)["inputs"])
    model = build_from_spec(spec).eval()
    files = sorted(Path(source).glob("step_*.safetensors"), key=lambda p: int(p.stem[5:]))
    for f in files:
        model.load_state_dict(load_file(str(f)))
        linears, captured = hooks(model, None)
        with torch.no_grad():
            for i in range(0, len(inputs), 512):
                model(inputs[i:i + 512])
        finish(f.stem, linears, captured)
        for m in linears.values():
            m._forward_pre_hooks.clear()
else:
    import transformers
    texts = [json.loads(line)["text"] for line in open(probe)]
    folders = sorted(Path(source).glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    tok = transformers.AutoTokenizer.from_pretrained(str(folders[0]))
    batch = tok(texts, padding=True, truncation=True, max_length=128, return_tensors="pt")
    last = batch["attention_mask"].sum(1) - 1
    for folder in folders:
        model = transformers.AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
        linears, captured = hooks(model, last)
        with torch.no_grad():
            model(**batch, use_cache=False)
        finish(folder.name, linears, captured)
'''


# ---------------------------------------------------------------- a breakdown of (d)
NO_WRITES = r'''
import sys
from flq_audit.cli import main
from flq_audit.store import _writer
def skip(self, array, region, data):  # every store write of a step becomes a no-op
    self._submit_job(lambda: None)
_writer.StepWriter._submit = skip
sys.argv = ["flq-audit", *sys.argv[1:]]
main()
'''


# ---------------------------------------------------------------- the benchmark
def cli(*args: object, threads: int) -> list[str]:
    return [sys.executable, "-m", "flq_audit", *map(str, args), "--quiet", "--device", "cpu",
            "--threads", str(threads), "--overwrite"]


def setup(work: Path, shape: dict) -> None:
    """Make both checkpoint sequences and the Hub repository of the neox one (untimed).

    Run in a child process: a parent that loaded six checkpoints would pass its peak RSS on
    to every process it spawns (Linux counts the spawner's high-water mark in the child's
    ``ru_maxrss``), which would hide the measured peaks."""
    if not (work / "digits8").exists():
        make_digits(work)
    if not (work / "neox").exists():
        make_neox(work, shape)
    if not (work / "texts2048.jsonl").exists():
        write_texts(work / "texts2048.jsonl", 2048)
    sys.path.insert(0, str(ROOT))
    from tests._helpers.hub import OlahServer, build_git_repo

    repo = OlahServer(work / "olah").repo_path("EleutherAI/pythia-bench")
    if not repo.exists():
        revisions = {f"step{s}": {p.name: p.read_bytes()
                                  for p in (work / "neox" / f"checkpoint-{s}").iterdir()}
                     for s in NEOX_STEPS}
        build_git_repo(repo, {"main": revisions[f"step{max(NEOX_STEPS)}"], **revisions})


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="a small NeoX model (quick run)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--sections", default="a,b,c,d", help="which sections to run")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--work", type=Path, default=None, help="keep the setup here")
    parser.add_argument("--setup-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    shape = SMALL if args.small else PYTHIA_70M
    if args.setup_only:
        return setup(args.work, shape)
    sections = set(args.sections.split(","))
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    # an installed package has its bytecode compiled; an editable checkout may not
    # (PYTHONDONTWRITEBYTECODE), which would charge every run for compiling flq_audit
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(ROOT / "flq_audit")],
                   check=True, stdout=subprocess.DEVNULL)
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, __file__, "--setup-only", "--work", str(work),
                    *(["--small"] if args.small else [])], check=True)
    load_before = os.getloadavg()
    digits, neox, probe = work / "digits8", work / "neox", work / "texts.jsonl"
    t, r = args.threads, args.repeats
    stores = work / "stores"
    neox_args = (neox, "--probe", probe, "--pooling", "last")
    sequences = {"digits_x8": (digits,), "neox": neox_args}
    result: dict[str, object] = {"small": args.small, "threads": t, "repeats": r,
                                 "cpus": os.cpu_count(), "neox_shape": shape,
                                 "sections": sorted(sections)}

    sequential = {name: repeated(lambda i, a=a, n=name: cli(*a, "--out", stores / f"{n}.zarr",
                                                         threads=t), r)
                  for name, a in sequences.items()}
    result["sequential"] = sequential
    write_result(result, args.out)

    if "a" in sections:
        workers = {name: repeated(lambda i, a=a, n=name: cli(
            *a, "--workers", 2, "--out", stores / f"{n}-w.zarr", threads=t), r)
            for name, a in sequences.items()}
        result["a_workers2"] = {n: {**w, "speedup": ratio(sequential[n], w, "wall_s")}
                                for n, w in workers.items()}
        write_result(result, args.out)
        # the same sequence where the forward dominates: 2,048 texts instead of 512
        big = (neox, "--probe", work / "texts2048.jsonl", "--pooling", "last")
        rb = max(1, r // 2)
        one = repeated(lambda i: cli(*big, "--out", stores / "big.zarr", threads=t), rb)
        two = repeated(lambda i: cli(*big, "--workers", 2, "--out", stores / "big-w.zarr",
                                     threads=t), rb)
        result["a_workers2"]["neox_2048_texts"] = {  # type: ignore[index]
            "sequential": one, "workers2": two, "speedup": ratio(one, two, "wall_s")}
        write_result(result, args.out)

    if sections & {"b", "c"}:
        no_prefetch = repeated(lambda i: cli(*neox_args, "--no-prefetch", "--out",
                                             stores / "np.zarr", threads=t), r)
        result["c_peak_rss"] = {"prefetch_mib": sequential["neox"]["peak_rss_mib"],
                                "no_prefetch_mib": no_prefetch["peak_rss_mib"],
                                "ratio": ratio(sequential["neox"], no_prefetch, "peak_rss_mib")}
        result["no_prefetch_local"] = no_prefetch
        write_result(result, args.out)

    if "d" in sections:
        hand = {"digits_x8": repeated(lambda i: [sys.executable, "-c", HAND_LOOP, "digits",
                                                 digits, digits / "probe.npz", work / "hand-d",
                                                 t], r),
                "neox": repeated(lambda i: [sys.executable, "-c", HAND_LOOP, "neox", neox, probe,
                                            work / "hand-n", t], r)}
        result["d_hand_loop"] = {n: {"hand": h,
                                     "audit_cpu_ratio": ratio(sequential[n], h, "cpu_s"),
                                     "audit_wall_ratio": ratio(sequential[n], h, "wall_s")}
                                 for n, h in hand.items()}
        # where the digits gap lies: the same audit with its store writes made no-ops
        unwritten = repeated(lambda i: [sys.executable, "-c", NO_WRITES, *cli(
            digits, "--out", stores / "digits-unwritten.zarr", threads=t)[3:]], r)
        result["d_hand_loop"]["digits_x8"]["audit_without_store_writes"] = {  # type: ignore[index]
            **unwritten, "cpu_ratio_to_hand": ratio(unwritten, hand["digits_x8"], "cpu_s")}
        write_result(result, args.out)

    if "b" in sections:
        one_step = repeated(lambda i: cli(*neox_args, "--steps", str(NEOX_STEPS[0]),
                                          "--no-prefetch", "--out", stores / "one.zarr",
                                          threads=t), r)
        result["one_step_no_prefetch"] = one_step
        # one step's wall time on this (otherwise idle) machine, without fetching
        per_step = (float(result["no_prefetch_local"]["wall_s"])  # type: ignore[index]
                    - float(one_step["wall_s"])) / (len(NEOX_STEPS) - 1)
        result["b_hub_prefetch"] = hub_section(work, probe, per_step, t, r)
    result["load_average"] = {"before": load_before, "after": os.getloadavg()}
    print(write_result(result, args.out))
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)


def hub_section(work: Path, probe: Path, compute: float, t: int, r: int) -> object:
    """Prefetch vs not, each weight file taking as long to fetch as one step computes.

    The fetch of one weight file through the mirror without delay is measured first; the
    proxy then adds ``compute`` minus that, trickled over the download."""
    sys.path.insert(0, str(ROOT))
    from tests._helpers.hub import OlahServer, olah_cli

    if olah_cli() is None:
        return "skipped: olah is not installed"
    server = OlahServer(work / "olah")
    upstream = server.start()
    try:
        proxy = DelayProxy(upstream, delay=0.0)
        stores = work / "stores"

        def env(name: str, i: int) -> dict[str, str]:
            home = work / f"hf-{name}-{i}"
            shutil.rmtree(home, ignore_errors=True)
            return {**os.environ, "HF_ENDPOINT": proxy.endpoint, "HF_HOME": str(home),
                    "HF_HUB_CACHE": str(home / "hub"), "HF_HUB_DISABLE_TELEMETRY": "1",
                    # the loopback mirror reads a weight file whole before it answers
                    "HF_HUB_DOWNLOAD_TIMEOUT": "300", "HF_HUB_ETAG_TIMEOUT": "60"}

        download = [sys.executable, "-c", "from huggingface_hub import hf_hub_download; "
                    "hf_hub_download('EleutherAI/pythia-bench', 'model.safetensors', "
                    "revision='step0')"]
        fetch = min(spawn_measure(download, env("fetch", i))["wall_s"] for i in range(2))
        proxy.delay = max(0.0, compute - fetch)

        def run(flag: str):
            return lambda i: cli("EleutherAI/pythia-bench", "--steps", "all", "--probe", probe,
                                 "--pooling", "last", flag, "--out", stores / f"hub{flag}.zarr",
                                 threads=t)

        with_prefetch = repeated(run("--prefetch"), r, lambda i: env("p", i))
        without = repeated(run("--no-prefetch"), r, lambda i: env("n", i))
        return {"compute_per_step_s": round(compute, 3), "fetch_without_delay_s": round(fetch, 3),
                "delay_per_file_s": round(proxy.delay, 3), "prefetch": with_prefetch,
                "no_prefetch": without, "speedup": ratio(without, with_prefetch, "wall_s")}
    finally:
        server.stop()


if __name__ == "__main__":
    main()
