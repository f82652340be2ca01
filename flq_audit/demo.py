"""The built-in example: train the digits MLP recipe, audit it, then report on it (metrics,
figures, NetCDF export and page) as ``flq-audit report`` does."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from flq_audit import api
from flq_audit.audit.runner import AuditResult, Progress
from flq_audit.recipes import digits_mlp
from flq_audit.recipes._common import TrainingProgress

if TYPE_CHECKING:
    import xarray as xr

    from flq_audit.reading import Report

#: Optimizer steps of the demo's training run.
DEFAULT_TRAIN_STEPS = 3000


@dataclass
class DemoResult:
    """Paths the demo wrote and what its report says."""

    checkpoints: Path
    store: Path
    audit: AuditResult
    report: Report

    @property
    def metrics(self) -> xr.Dataset:
        """Every registered metric group, as the report computed them."""
        return self.report.metrics

    @property
    def netcdf(self) -> Path:
        """The NetCDF export of the metrics (``report/metrics.nc``)."""
        return self.report.netcdf

    @property
    def figure(self) -> Path:
        """The TL heatmap (``report/target_linearity.png``)."""
        return self.report.figures[0]


def run_demo(
    workdir: str | Path = "flq-demo", *, progress: Progress | None = None,
    training: TrainingProgress | None = None, train_steps: int = DEFAULT_TRAIN_STEPS,
) -> DemoResult:
    """Train (if ``workdir/checkpoints`` is absent), audit into ``workdir/store.zarr``, then
    write its report into ``workdir/report`` (:func:`flq_audit.api.report`).

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
    return DemoResult(checkpoints, store, result, api.report(store, work / "report"))
