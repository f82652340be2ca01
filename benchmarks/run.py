"""The whole benchmark in one command: flq-audit against the baselines a user would write by hand.

Rows (issue 22's table), each a paired, alternating measurement of fresh processes with one
torch/BLAS thread on both sides (``benchmarks/_measure.py``), against the hand-written
baselines of ``benchmarks/_baselines.py``:

a. digits recipe audit (13 steps, 1,797 samples) vs the hooks + ``np.save`` loop, CPU;
b. the audit's fixed cost: a 1-step audit minus the per-step cost ((13-step − 1-step) / 12),
   CPU, beside ``python -c "import torch"``;
c. GPT-NeoX (``--quick``: bench_scale's SMALL shape; ``--full``: pythia-70m), 6 steps, 512
   texts, vs the hand loop stopped at the last captured layer's input: CPU and peak RSS;
d. ``flq-audit metrics`` with every group vs ``--metric tl`` on that neox store, CPU;
e. TL (``compute_metrics``, in process, after the imports) vs ``numpy.linalg.lstsq`` on the
   stored digits activations: CPU of the computation, and the largest difference of the values;
f. store writes, CPU per GiB: the audit minus the same audit with its store writes made no-ops,
   vs a plain zarr loop writing the same arrays with the store's codecs and chunks (digits,
   its probe tiled ×8: 0.5 GiB);
g. ``--workers 2`` vs sequential, neox, wall (the speed-up);
h. ``flq-audit show STORE`` vs ``python -c "import xarray"``, wall;
i. peak RSS of the digits audit, probe ×8 vs ×1.

Rows c, d+e and g are measured by ``bench_step_overhead.run``, ``bench_suite.run`` and
``bench_workers.run`` when those modules exist and return entries in this script's row format
(a dict with ``"rows": [entry, ...]``, each entry as :func:`entry` makes); otherwise their
result is kept under ``external`` and the row is measured here. Each entry says which
implementation measured it.

Run:  python benchmarks/run.py --quick|--full [--work DIR] [--only a,b,...] [--repeats N]
      [--out PATH]
      python benchmarks/run.py --tables-only JSON
Writes one JSON (default benchmarks/results/benchmark.json) and regenerates the table of
docs/performance.md from it. The setup (training the digits recipe, writing the neox
checkpoints) is untimed and kept in ``--work`` for the next run.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from _measure import loadavg, machine, paired, summary, values
from _results import write_result
from _tables import DOC, write_tables
from bench_scale import NO_WRITES, PYTHIA_70M, SMALL, cli, make_digits, make_neox

ROOT = Path(__file__).resolve().parent.parent
HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "results" / "benchmark.json"
ROWS = "abcdefghi"
THREADS = 1
PY = sys.executable
BASELINES = [PY, HERE / "_baselines.py"]
ALL_GROUPS = "tl,surrogate,gram,dynamics,nc"
FLQ_TL = r'''
import json, resource, sys
from flq_audit.api import compute_metrics
def cpu():
    u = resource.getrusage(resource.RUSAGE_SELF)
    return u.ru_utime + u.ru_stime
start = cpu()
ds = compute_metrics(sys.argv[1], metrics=["tl"], recompute=True, scheduler="sync")
tl = ds["target_linearity"].transpose("step", "layer").values
spent = cpu() - start
print(json.dumps({"cpu_s": spent, "tl": [[None if v != v else float(v) for v in r] for r in tl]}))
'''


def entry(id_: str, what: str, *, flq: list[float], base: list[float] | None, unit: str,
          goal: tuple[str, str, float], ratio: list[float] | None = None,
          baseline_what: str = "", implementation: str = "benchmarks/run.py",
          load: dict | None = None, **extra: object) -> dict[str, object]:
    """One row: both sides' figures, the paired ratio, the goal and whether it is met.

    ``goal`` is (``"ratio"`` or ``"flq_audit"``, ``"<="`` or ``">="``, value): which median
    the goal bounds. ``ratio`` defaults to flq / base pair by pair."""
    if ratio is None and base is not None:
        ratio = [a / b for a, b in zip(flq, base, strict=True)]
    on, op, bound = goal
    checked = {"ratio": ratio, "flq_audit": flq}[on]
    median = summary(checked)["median"] if checked else None
    met = None if median is None else (median <= bound if op == "<=" else median >= bound)
    unit_text = f" {unit}" if on != "ratio" and unit else ""
    return {"id": id_, "what": what, "implementation": implementation, "unit": unit,
            "flq_audit": summary(flq), "baseline": summary(base) if base else None,
            "baseline_what": baseline_what, "ratio": summary(ratio) if ratio else None,
            "goal": {"on": on, "op": op, "value": bound,
                     "text": f"{'≤' if op == '<=' else '≥'} {bound:g}{unit_text}"},
            "met": met, "repeats": len(flq), "load_average": load or {}, "extra": extra}


class Bench:
    """The work folder, the children's environment and the rows measured so far."""

    def __init__(self, work: Path, quick: bool, repeats: int | None = None) -> None:
        self.work, self.quick = work, quick
        self.repeats = repeats or (3 if quick else 5)
        self.stores = work / "stores"
        self.neox_root = work / ("neox-small" if quick else "neox-70m")
        self.env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
                    "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "NO_COLOR": "1",
                    "HF_HUB_DISABLE_TELEMETRY": "1", "TOKENIZERS_PARALLELISM": "false",
                    "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
        self.cache: dict[str, dict] = {}

    # ------------------------------------------------------------ inputs
    @property
    def digits(self) -> Path:
        return self.work / "digits"

    @property
    def neox(self) -> tuple[object, ...]:
        return (self.neox_root / "neox", "--probe", self.neox_root / "texts.jsonl",
                "--pooling", "last")

    def audit(self, *args: object) -> list[str]:
        return cli(*args, threads=THREADS)

    def store(self, name: str, *args: object) -> Path:
        """A store audited once (untimed) if an earlier row has not left one."""
        path = self.stores / f"{name}.zarr"
        if not (path / "zarr.json").exists():
            subprocess.run(self.audit(*args, "--out", path), env=self.env, check=True,
                           stdout=subprocess.DEVNULL)
        return path

    def pairs(self, sides: dict[str, Callable[[int], list]]) -> tuple[dict, dict]:
        before = loadavg()
        runs = paired(sides, self.repeats, self.env)
        return runs, {"before": before, "after": loadavg()}

    # ------------------------------------------------------------ rows
    def row_a(self) -> list[dict]:
        runs, load = self.pairs({
            "flq": lambda i: self.audit(self.digits, "--out", self.stores / "digits.zarr"),
            "hand": lambda i: [*BASELINES, "hand-loop", "digits", self.digits,
                               self.work / "hand-digits"]})
        self.cache["digits_audit"] = runs["flq"]
        return [entry("a", "digits recipe audit (13 steps, 1,797 samples) vs hooks + `np.save` "
                      "loop, CPU", flq=values(runs["flq"], "cpu_s"),
                      base=values(runs["hand"], "cpu_s"), unit="s", goal=("ratio", "<=", 1.3),
                      load=load, wall_s=summary(values(runs["flq"], "wall_s")))]

    def row_b(self) -> list[dict]:
        steps = len(list(self.digits.glob("step_*.safetensors")))
        runs, load = self.pairs({
            "full": lambda i: self.audit(self.digits, "--out", self.stores / "digits-b.zarr"),
            "one": lambda i: self.audit(self.digits, "--steps", "0", "--out",
                                        self.stores / "digits-one.zarr"),
            "torch": lambda i: [PY, "-c", "import torch"]})
        full, one = values(runs["full"], "cpu_s"), values(runs["one"], "cpu_s")
        fixed = [o - (f - o) / (steps - 1) for f, o in zip(full, one, strict=True)]
        torch_cpu = values(runs["torch"], "cpu_s")
        return [entry("b", f"the audit's fixed cost: 1-step audit − per-step cost (({steps}-step "
                      f"− 1-step) / {steps - 1}), CPU; beside it `import torch`", flq=fixed,
                      base=torch_cpu, unit="s", goal=("flq_audit", "<=", 1.0),
                      baseline_what="`python -c \"import torch\"`", load=load,
                      one_step_cpu_s=summary(one), full_cpu_s=summary(full))]

    def row_c(self) -> list[dict]:
        runs, load = self.pairs({
            "flq": lambda i: self.audit(*self.neox, "--out", self.stores / "neox.zarr"),
            "hand": lambda i: [*BASELINES, "hand-loop", "neox", self.neox_root / "neox",
                               self.work / "hand-neox", "--texts",
                               self.neox_root / "texts.jsonl"]})
        self.cache["neox_audit"] = runs["flq"]
        what = f"GPT-NeoX ({self.shape_name}, 6 steps, 512 texts) vs hand loop stopped at the "
        return [entry("c", what + "last captured layer's input, CPU",
                      flq=values(runs["flq"], "cpu_s"), base=values(runs["hand"], "cpu_s"),
                      unit="s", goal=("ratio", "<=", 1.1), load=load),
                entry("c·rss", what + "last captured layer's input, peak RSS",
                      flq=values(runs["flq"], "peak_rss_mib"),
                      base=values(runs["hand"], "peak_rss_mib"), unit="MiB",
                      goal=("ratio", "<=", 1.1), load=load)]

    def row_d(self) -> list[dict]:
        store = self.store("neox", *self.neox)

        def metrics(groups: str) -> Callable[[int], list]:
            return lambda i: [PY, "-m", "flq_audit", "metrics", store, "--metric", groups,
                              "--recompute", "--format", "tsv"]

        runs, load = self.pairs({"suite": metrics(ALL_GROUPS), "tl": metrics("tl")})
        return [entry("d", f"full metric suite ({ALL_GROUPS}) vs TL alone, neox store, CPU",
                      flq=values(runs["suite"], "cpu_s"), base=values(runs["tl"], "cpu_s"),
                      unit="s", goal=("ratio", "<=", 3.0), baseline_what="`--metric tl`",
                      load=load, peak_rss_mib=summary(values(runs["suite"], "peak_rss_mib")))]

    def row_e(self) -> list[dict]:
        store = self.store("digits", self.digits)
        runs, load = self.pairs({"tl": lambda i: [PY, "-c", FLQ_TL, store],
                                 "lstsq": lambda i: [*BASELINES, "lstsq", store]})
        tl = [json.loads(str(r["stdout"])) for r in runs["tl"]]
        fit = [json.loads(str(r["stdout"])) for r in runs["lstsq"]]
        diffs = [abs(a - b) for ra, rb in zip(tl[-1]["tl"], fit[-1]["tl"], strict=True)
                 for a, b in zip(ra, rb, strict=True) if a is not None and b is not None]
        what = "TL vs `numpy.linalg.lstsq` on the same stored values (digits)"
        return [entry("e", what + ", CPU of the computation", flq=[t["cpu_s"] for t in tl],
                      base=[f["cpu_s"] for f in fit], unit="s", goal=("ratio", "<=", 1.0),
                      load=load),
                entry("e·diff", what + ", largest difference of the values", flq=[max(diffs)],
                      base=None, unit="", goal=("flq_audit", "<=", 1e-12), load=load,
                      entries=len(diffs), over_1e12=sum(d > 1e-12 for d in diffs))]

    def row_f(self) -> list[dict]:
        source = self.work / "digits8"
        store = self.stores / "writes.zarr"
        dest = Path(tempfile.mkdtemp(prefix="zarr-loop-", dir=self.work)) / "copy.zarr"
        runs, load = self.pairs({
            "audit": lambda i: self.audit(source, "--out", store),
            "unwritten": lambda i: [PY, "-c", NO_WRITES, *self.audit(
                source, "--out", self.stores / "unwritten.zarr")[3:]],
            "zarr": lambda i: [*BASELINES, "zarr-write", store, dest]})
        loops = [json.loads(str(r["stdout"])) for r in runs["zarr"]]
        gib = loops[0]["bytes"] / 2**30
        audit = [(a - b) / gib for a, b in zip(values(runs["audit"], "cpu_s"),
                                               values(runs["unwritten"], "cpu_s"), strict=True)]
        return [entry("f", f"store write CPU per GiB ({source.name}, {gib:.3f} GiB): audit − "
                      "audit with no-op writes, vs a plain zarr loop, same codecs and chunks",
                      flq=audit, base=[loop["cpu_s"] / gib for loop in loops], unit="s/GiB",
                      goal=("ratio", "<=", 1.2), load=load, arrays=loops[0]["arrays"])]

    def row_g(self) -> list[dict]:
        runs, load = self.pairs({
            "w2": lambda i: self.audit(*self.neox, "--workers", 2, "--out",
                                       self.stores / "neox-w2.zarr"),
            "seq": lambda i: self.audit(*self.neox, "--out", self.stores / "neox-seq.zarr")})
        w2, seq = values(runs["w2"], "wall_s"), values(runs["seq"], "wall_s")
        return [entry("g", f"`--workers 2` vs sequential, neox ({self.shape_name}), wall "
                      "(ratio: the speed-up)", flq=w2, base=seq, unit="s",
                      ratio=[s / w for s, w in zip(seq, w2, strict=True)],
                      goal=("ratio", ">=", 1.0), baseline_what="sequential", load=load,
                      cpu_s_workers=summary(values(runs["w2"], "cpu_s")),
                      cpu_s_sequential=summary(values(runs["seq"], "cpu_s")))]

    def row_h(self) -> list[dict]:
        store = self.store("digits", self.digits)
        sides = {"show": lambda i: [PY, "-m", "flq_audit", "show", store],
                 "xarray": lambda i: [PY, "-c", "import xarray"]}
        paired(sides, 1, self.env)  # warm the file cache; not counted
        runs, load = self.pairs(sides)
        return [entry("h", "`flq-audit show STORE` vs `python -c \"import xarray\"`, wall",
                      flq=values(runs["show"], "wall_s"), base=values(runs["xarray"], "wall_s"),
                      unit="s", goal=("ratio", "<=", 1.5), load=load)]

    def row_i(self) -> list[dict]:
        runs, load = self.pairs({
            "x8": lambda i: self.audit(self.work / "digits8", "--out", self.stores / "x8.zarr"),
            "x1": lambda i: self.audit(self.digits, "--out", self.stores / "x1.zarr")})
        return [entry("i", "peak RSS of the digits audit, probe ×8 vs ×1",
                      flq=values(runs["x8"], "peak_rss_mib"),
                      base=values(runs["x1"], "peak_rss_mib"), unit="MiB",
                      goal=("ratio", "<=", 1.2), baseline_what="×1", load=load)]

    @property
    def shape_name(self) -> str:
        return "2 layers, width 128" if self.quick else "pythia-70m shape"


EXTERNAL = {"c": "bench_step_overhead", "d": "bench_suite", "e": "bench_suite",
            "g": "bench_workers"}


def external_rows(bench: Bench, row_id: str, result: dict) -> list[dict] | None:
    """The entries of ``row_id`` from the module that owns it, if it is there and returns
    entries in this script's format; its raw result is kept in ``result["external"]``."""
    name = EXTERNAL.get(row_id)
    if name is None or not (HERE / f"{name}.py").exists():
        return None
    raw = result["external"]
    if name not in raw:
        try:
            module = importlib.import_module(name)
            figures = module.run(bench.work / f"ext-{name}", bench.quick)
            raw[name] = json.loads(json.dumps(figures, default=str))
        except Exception as exc:  # its failure is recorded; the row is measured here
            raw[name] = {"error": f"{type(exc).__name__}: {exc}"}
    rows = raw[name].get("rows") if isinstance(raw[name], dict) else None
    mine = [e for e in rows or [] if isinstance(e, dict) and str(e.get("id", "")).startswith(
        row_id) and {"flq_audit", "goal", "what"} <= set(e)]
    for e in mine:
        e.setdefault("implementation", f"benchmarks/{name}.py")
    return mine or None


def measure(bench: Bench, only: str, result: dict, out: Path) -> None:
    """Every selected row, each written to ``out`` as soon as it is measured."""
    for row_id in only:
        before = loadavg()
        try:
            rows = external_rows(bench, row_id, result)
            if rows is None:
                rows = getattr(bench, f"row_{row_id}")()
                if EXTERNAL.get(row_id) in result["external"]:
                    for e in rows:
                        e["implementation"] += (f" ({EXTERNAL[row_id]}.run's result, not in "
                                                "the row format, is kept under external)")
        except Exception as exc:  # one failing row leaves the others measured
            rows = [{"id": row_id, "what": f"row {row_id}", "error": f"{type(exc).__name__}: "
                     f"{str(exc).splitlines()[0][:200]}",
                     "load_average": {"before": before, "after": loadavg()}}]
        result["rows"] += rows
        write_result(result, out)


def setup(work: Path, quick: bool) -> None:
    """The checkpoint sequences (untimed), each made once and kept in ``work``."""
    if not (work / "digits8").exists():
        make_digits(work)
    root = work / ("neox-small" if quick else "neox-70m")
    if not (root / "neox").exists():
        make_neox(root, SMALL if quick else PYTHIA_70M)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--quick", action="store_true", help="small sizes, 3 repeats")
    mode.add_argument("--full", action="store_true", help="the issue's sizes, 5 repeats")
    mode.add_argument("--tables-only", type=Path, metavar="JSON",
                      help="regenerate the tables of docs/performance.md from a saved JSON")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "flq-bench")
    parser.add_argument("--only", default=",".join(ROWS), help="rows to run, e.g. a,b,h")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--repeats", type=int, default=None, help="paired runs per row "
                        "(default 3 with --quick, 5 with --full)")
    parser.add_argument("--doc", type=Path, default=DOC, help=argparse.SUPPRESS)
    parser.add_argument("--setup-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.tables_only:
        return write_tables(args.tables_only, args.doc)
    args.work.mkdir(parents=True, exist_ok=True)
    if args.setup_only:
        return setup(args.work, args.quick)
    only = "".join(r for r in args.only.replace(",", "") if r in ROWS)
    bench = Bench(args.work, args.quick, args.repeats)
    # a child makes the checkpoints: this process stays small, and so do the RSS high-water
    # marks its children inherit
    subprocess.run([PY, __file__, "--setup-only", "--work", args.work,
                    "--quick" if args.quick else "--full"], env=bench.env, check=True)
    subprocess.run([PY, "-m", "compileall", "-q", ROOT / "flq_audit"], check=True,
                   stdout=subprocess.DEVNULL)
    result: dict = {"mode": "quick" if args.quick else "full", "repeats": bench.repeats,
                    "threads": THREADS, "machine": machine(),
                    "started": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
                    "load_average": {"before": loadavg()}, "rows": [], "external": {}}
    measure(bench, only, result, args.out)
    result["load_average"]["after"] = loadavg()
    write_result(result, args.out)
    write_tables(args.out, args.doc)
    print(json.dumps([{k: e.get(k) for k in ("id", "ratio", "met", "error")}
                      for e in result["rows"]], indent=1))


if __name__ == "__main__":
    main()
