"""The built-in example: train the digits MLP recipe, audit it, compute TL, export, plot."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import xarray as xr

from flq_audit import api
from flq_audit.audit.runner import AuditResult, Progress
from flq_audit.recipes import digits_mlp
from flq_audit.recipes._common import TrainingProgress
from flq_audit.report import report_groups, tl_heatmap, write_report

#: Optimizer steps of the demo's training run.
DEFAULT_TRAIN_STEPS = 3000


@dataclass
class DemoResult:
    """Paths the demo wrote and the TL table it computed."""

    checkpoints: Path
    store: Path
    netcdf: Path
    figure: Path
    audit: AuditResult
    metrics: xr.Dataset


def run_demo(
    workdir: str | Path = "flq-demo", *, progress: Progress | None = None,
    training: TrainingProgress | None = None, train_steps: int = DEFAULT_TRAIN_STEPS,
) -> DemoResult:
    """Train (if ``workdir/checkpoints`` is absent), audit, compute metrics, export, plot.

    ``training(step, total_steps, loss)`` is called after each of the ``train_steps``
    optimizer steps.
    """
    work = Path(workdir)
    checkpoints = work / "checkpoints"
    if not (checkpoints / "model_spec.json").is_file():
        digits_mlp.train(checkpoints, total_steps=train_steps, progress=training)
    store = work / "store.zarr"
    result = api.audit(str(checkpoints), out=store, progress=progress)
    assert isinstance(result, AuditResult)
    metrics = api.compute_metrics(store, metrics=report_groups())
    netcdf = api.export(store, work / "metrics.nc")
    figure = tl_heatmap(
        metrics["target_linearity"], work / "target_linearity.png",
        title="Target Linearity of each layer's input, digits MLP (SGD + momentum)",
    )
    write_report(metrics, work / "report")
    return DemoResult(checkpoints, store, netcdf, figure, result, metrics)
