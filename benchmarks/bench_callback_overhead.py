"""Benchmark how much the in-training audit slows training: a real ``transformers.Trainer``
and a real Lightning ``Trainer``, each with and without its flq-audit callback.

Each run is a fresh subprocess (the same imports and caches for every configuration) that
trains a 32→256→256→10 MLP on CPU for ``--steps`` optimizer steps (batches of 64) and saves
a checkpoint every ``--every`` steps: the Trainer's own ``checkpoint-N`` folders (with and
without the callback), the Lightning callback's safetensors saves (without the callback the
Lightning run saves nothing, which is the run a user would compare with). With the callback,
the default background worker audits each saved step into a store (a 512-row probe).

Measured per run: ``loop_s``, the training loop from the train-begin hook to the train-end
hook (what the callback may slow down: the hand-overs, and the worker competing for the
CPU); ``total_s``, the whole ``train()``/``fit()`` call, which with the callback includes
waiting at the end for the audit of the last steps; ``handover_s``, the time spent inside
the callback's save hook, summed over the saves. Runs are repeated ``--repeats`` times with
the order rotated; ``ratios`` are callback/plain medians of ``loop_s`` and ``total_s``, with
the per-repeat ratios' min and max.

Run:  python benchmarks/bench_callback_overhead.py [--repeats 3] [--steps 300] [--every 100]
Prints one JSON object and writes it to ``--out`` (default
benchmarks/results/bench_callback_overhead.json).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

from _results import write_result

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "bench_callback_overhead.json"
SPEC = {"type": "mlp", "in_features": 32, "widths": [256, 256], "out_features": 10,
        "activation": "gelu", "bias": True}
CONFIGS = ("hf-plain", "hf-callback", "lightning-plain", "lightning-callback")


def _inputs(root: Path) -> tuple[Path, Path, Any, Any]:
    import numpy as np
    import torch

    rng = np.random.default_rng(0)
    (root / "spec.json").write_text(json.dumps(SPEC))
    np.savez(root / "probe.npz", inputs=rng.normal(size=(512, 32)).astype(np.float32),
             targets=rng.integers(0, 10, 512), num_classes=np.int64(10))
    x = torch.from_numpy(rng.normal(size=(4096, 32)).astype(np.float32))
    y = torch.from_numpy(rng.integers(0, 10, 4096)).long()
    return root / "spec.json", root / "probe.npz", x, y


def _timed_hook(obj: Any, name: str, spent: list[float]) -> None:
    """Wrap ``obj.name`` so that each call's duration is appended to ``spent``."""
    inner = getattr(obj, name)

    def hook(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return inner(*args, **kwargs)
        finally:
            spent.append(time.perf_counter() - start)

    setattr(obj, name, hook)


def run_hf(root: Path, audited: bool, steps: int, every: int) -> dict[str, Any]:
    import torch
    import transformers

    from flq_audit.integrations import FlqAuditCallback
    from flq_audit.models import build_from_spec

    spec, probe, x, y = _inputs(root)

    class Config(transformers.PretrainedConfig):
        model_type = "bench-mlp"

    class Model(transformers.PreTrainedModel):
        config_class = Config

        def __init__(self, config: Any) -> None:
            super().__init__(config)
            self.net = build_from_spec(SPEC)
            self.post_init()

        def _init_weights(self, module: Any) -> None:
            pass

        def forward(self, x: Any, labels: Any = None) -> dict:
            logits = self.net(x)
            return {"loss": torch.nn.functional.cross_entropy(logits, labels), "logits": logits}

    marks: dict[str, float] = {}

    class Clock(transformers.TrainerCallback):
        def on_train_begin(self, *args: Any, **kwargs: Any) -> None:
            marks["begin"] = time.perf_counter()

        def on_train_end(self, *args: Any, **kwargs: Any) -> None:
            marks["end"] = time.perf_counter()

    callbacks: list[Any] = [Clock()]
    spent: list[float] = []
    if audited:
        audit = FlqAuditCallback(root / "live.zarr", model=str(spec), probe=str(probe),
                                 on_error="warn")
        _timed_hook(audit, "on_save", spent)
        callbacks.append(audit)
    args = transformers.TrainingArguments(
        output_dir=str(root / "out"), max_steps=steps, save_steps=every,
        per_device_train_batch_size=64, report_to=[], use_cpu=True, disable_tqdm=True,
        logging_strategy="no", seed=0, dataloader_num_workers=0)
    rows = [{"x": a, "labels": b} for a, b in zip(x, y, strict=True)]
    torch.manual_seed(0)
    trainer = transformers.Trainer(model=Model(Config()), args=args, train_dataset=rows,
                                   callbacks=callbacks)
    return _measure(lambda: trainer.train(), marks, spent, root / "live.zarr")


def run_lightning(root: Path, audited: bool, steps: int, every: int) -> dict[str, Any]:
    import pytorch_lightning as pl
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    from flq_audit.integrations import FlqAuditLightningCallback
    from flq_audit.models import build_from_spec

    spec, probe, x, y = _inputs(root)

    class Module(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = build_from_spec(SPEC)

        def training_step(self, batch: Any, batch_idx: int) -> Any:
            return torch.nn.functional.cross_entropy(self.net(batch[0]), batch[1])

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(self.parameters(), lr=0.05)

    marks: dict[str, float] = {}

    class Clock(pl.Callback):
        def on_train_start(self, *args: Any) -> None:
            marks["begin"] = time.perf_counter()

        def on_train_end(self, *args: Any) -> None:
            marks["end"] = time.perf_counter()

    callbacks: list[Any] = [Clock()]
    spent: list[float] = []
    if audited:
        audit = FlqAuditLightningCallback(root / "live.zarr", root / "ckpts", every_n_steps=every,
                                          model=str(spec), probe=str(probe), on_error="warn")
        _timed_hook(audit, "_save", spent)
        callbacks.append(audit)
    pl.seed_everything(0, verbose=False)
    module = Module()
    loader = DataLoader(TensorDataset(x, y), batch_size=64, shuffle=True)
    trainer = pl.Trainer(max_steps=steps, accelerator="cpu", devices=1, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, callbacks=callbacks)
    return _measure(lambda: trainer.fit(module, loader), marks, spent, root / "live.zarr")


def _measure(train: Any, marks: dict[str, float], spent: list[float], store: Path
             ) -> dict[str, Any]:
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train()
    total = time.perf_counter() - start
    done: list[int] = []
    if store.exists():
        import zarr

        group = zarr.open_group(str(store), mode="r")
        done = [int(s) for s, d in zip(group["step"][:], group["done"][:], strict=True) if d]
    failed = [str(w.message).splitlines()[0] for w in caught if "failed at step" in str(w.message)]
    return {"loop_s": marks["end"] - marks["begin"], "total_s": total,
            "handover_s": sum(spent), "saves": len(spent), "audited_steps": done,
            "audit_failures": failed}


def one_run(config: str, steps: int, every: int) -> dict[str, Any]:
    trainer, mode = config.split("-")
    with tempfile.TemporaryDirectory(prefix="flq-bench-callback-") as tmp:
        runner = run_hf if trainer == "hf" else run_lightning
        return runner(Path(tmp), mode == "callback", steps, every)


def _spread(values: list[float]) -> dict[str, float]:
    return {"median": round(statistics.median(values), 3), "min": round(min(values), 3),
            "max": round(max(values), 3), "spread": round(max(values) - min(values), 3)}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--every", type=int, default=100)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--one", choices=CONFIGS, help=argparse.SUPPRESS)  # a measured child
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(one_run(args.one, args.steps, args.every)))
        return {}
    env = dict(os.environ, NO_COLOR="1", HF_HUB_OFFLINE="1", HF_HUB_DISABLE_TELEMETRY="1")
    samples: dict[str, list[dict[str, Any]]] = {c: [] for c in CONFIGS}
    for round_ in range(args.repeats):
        order = CONFIGS[round_ % len(CONFIGS):] + CONFIGS[:round_ % len(CONFIGS)]
        for config in order:
            proc = subprocess.run(
                [sys.executable, __file__, "--one", config, "--steps", str(args.steps),
                 "--every", str(args.every)], env=env, capture_output=True, text=True, check=False)
            if proc.returncode != 0:
                raise RuntimeError(f"{config} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
            samples[config].append(json.loads(proc.stdout.strip().splitlines()[-1]))
    stats = {c: {key: _spread([r[key] for r in runs]) for key in ("loop_s", "total_s", "handover_s")}
             for c, runs in samples.items()}
    ratios = {}
    for trainer in ("hf", "lightning"):
        plain, audited = samples[f"{trainer}-plain"], samples[f"{trainer}-callback"]
        ratios[trainer] = {key: {
            "of_medians": round(stats[f"{trainer}-callback"][key]["median"]
                                / stats[f"{trainer}-plain"][key]["median"], 3),
            "per_repeat": _spread([a[key] / p[key] for a, p in zip(audited, plain, strict=True)]),
        } for key in ("loop_s", "total_s")}
    result = {
        "benchmark": "callback_overhead", "repeats": args.repeats, "steps": args.steps,
        "every": args.every, "python": platform.python_version(), "cpus": os.cpu_count(),
        "stats": stats, "ratios": ratios,
        "saves": {c: runs[0]["saves"] for c, runs in samples.items()},
        "audited_steps": {c: runs[0]["audited_steps"] for c, runs in samples.items()},
        "audit_failures": {c: runs[0]["audit_failures"] for c, runs in samples.items()},
    }
    print(write_result(result, args.out))
    return result


if __name__ == "__main__":
    main()
