"""The Python API: what the CLI and notebooks call."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import xarray as xr

from flq_audit import __version__
from flq_audit.export import to_netcdf
from flq_audit.sources import CheckpointRef, open_source
from flq_audit.store import open_dataset

if TYPE_CHECKING:
    from flq_audit._plan import AuditPlan
    from flq_audit._runner import AuditResult, Progress

DtypeOptions = Literal["float32", "float16"]
GramDtypeOptions = Literal["float32", "float64"]


def list_checkpoints(source: str, *, steps: str = "all") -> list[CheckpointRef]:
    """Checkpoints of ``source`` selected by ``steps``."""
    from flq_audit.sources import select_steps

    refs = open_source(source).list_refs()
    wanted = set(select_steps([r.step for r in refs], steps))
    return [r for r in refs if r.step in wanted]


def audit(
    source: str,
    *,
    steps: str = "all",
    model: str | None = None,
    probe: str | None = None,
    layers: Sequence[str] | None = None,
    out: str | Path | None = None,
    batch_size: int = 512,
    device: str = "auto",
    activation_dtype: DtypeOptions = "float32",
    gram_dtype: GramDtypeOptions = "float32",
    max_samples: int | None = None,
    trust_pickle: bool = False,
    overwrite: bool = False,
    dry_run: bool = False,
    fl_loss: str | None = None,
    fl_lr: str | float | None = None,
    fl_batches: str | None = None,
    text_task: str = "sequence",
    pooling: str = "cls",
    text_column: str = "text",
    label_column: str = "label",
    max_length: int = 128,
    top_k: int = 50,
    trust_remote_code: bool = False,
    no_probe: bool = False,
    revision_pattern: str | None = None,
    subfolders: bool | None = None,
    template_steps: Sequence[int] | None = None,
    cache: str = "keep",
    offline: bool | None = None,
    hidden_states: bool = False,
    progress: Progress | None = None,
) -> AuditPlan | AuditResult:
    """Audit a checkpoint sequence into a Zarr store.

    Resolves the source, the step selection, the model, the probe and the layers (the probe
    is checked against the model before any checkpoint is read), then writes each step that
    is not yet done. With ``dry_run=True`` nothing is written and the :class:`AuditPlan` is
    returned.

    Raises
    ------
    CheckpointNotFoundError
        The source does not exist or holds no checkpoints.
    StepSelectionError
        ``steps`` is malformed, or two checkpoints claim one step.
    ProbeError, ModelBuildError, LayerNotFoundError
        The probe, model or layer selection is invalid.
    StoreMismatchError, StoreLockedError
        The output store belongs to another audit, or is being written.

    Notes
    -----
    With ``fl_loss`` (``"ce"`` or ``"mse"``), ``fl_lr`` (a number, or a JSON file
    ``{step: lr}``) and ``fl_batches`` (``"full"``, or a JSON file ``{step: [probe indices]}``)
    the audit also replays each step's training batch and stores the virtual covariance
    shift, the Gram change to the next selected checkpoint, and the FL residuals
    (see :mod:`flq_audit.feature_learning`).
    """
    from flq_audit._plan import TextOptions, make_plan
    from flq_audit._runner import run_audit
    from flq_audit.capture import resolve_device
    from flq_audit.feature_learning import load_fl_config

    if text_task not in ("sequence", "token", "next-token"):
        raise ValueError(f"text_task must be sequence, token or next-token, got {text_task!r}")
    if pooling not in ("cls", "last", "mean"):
        raise ValueError(f"pooling must be cls, last or mean, got {pooling!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if activation_dtype not in ("float32", "float16"):
        raise ValueError(f"activation_dtype must be float32 or float16, got {activation_dtype!r}")
    if gram_dtype not in ("float32", "float64"):
        raise ValueError(f"gram_dtype must be float32 or float64, got {gram_dtype!r}")
    fl = None
    if fl_loss is not None or fl_lr is not None or fl_batches is not None:
        if fl_loss is None or fl_lr is None or fl_batches is None:
            raise ValueError("the FL residual needs all of fl_loss, fl_lr and fl_batches "
                             "(--fl-loss, --fl-lr, --fl-batches): the training provenance")
        fl = load_fl_config(fl_loss, fl_lr, fl_batches)
    plan = make_plan(
        source, steps=steps, model=model, probe=probe, layers=list(layers or []), out=out,
        activation_dtype=activation_dtype, gram_dtype=gram_dtype, max_samples=max_samples,
        fl=fl, trust_remote_code=trust_remote_code, no_probe=no_probe,
        hidden_states=hidden_states,
        source_options=_source_options(source, revision_pattern=revision_pattern,
                                       subfolders=subfolders, template_steps=template_steps,
                                       cache=cache, offline=offline),
        text=TextOptions(task=text_task, pooling=pooling, text_column=text_column,
                         label_column=label_column, max_length=max_length, top_k=top_k),
    )
    if plan.store.exists() and not overwrite:
        try:
            done = open_dataset(plan.store)["done"]
            selected = {r.step for r in plan.refs}
            plan.already_done = [int(s) for s in done["step"].values[done.values.astype(bool)]
                                 if int(s) in selected]
        except Exception:  # an unreadable store is reported by the real run
            plan.already_done = []
    if dry_run:
        return plan
    return run_audit(
        plan, overwrite=overwrite, batch_size=batch_size, device=resolve_device(device),
        trust_pickle=trust_pickle, version=__version__, progress=progress,
    )


def _source_options(source: str, **options: object) -> dict[str, object]:
    """Hub-only options, passed on only when set (a local folder takes none)."""
    if options.get("cache") not in ("keep", "drop"):
        raise ValueError(f"cache must be 'keep' or 'drop', got {options.get('cache')!r}")
    if options.get("cache") == "keep":
        options.pop("cache")
    if options.get("template_steps") is not None:
        options["template_steps"] = [int(s) for s in options["template_steps"]]  # type: ignore[union-attr]
    return {k: v for k, v in options.items() if v is not None}


def open_store(path: str | Path) -> xr.Dataset:
    """Open a store lazily; ``ds.activations.sel(step=s, layer=l)`` gives one layer's features."""
    return open_dataset(path)


def compute_metrics(
    store: str | Path,
    *,
    metrics: Sequence[str] = ("tl",),
    pca: int | None = None,
    pca_threshold: int = 1000,
    ridge: float = 0.0,
    denominator: str = "column",
    scheduler: str | None = None,
) -> xr.Dataset:
    """Compute metrics lazily from the store, persist them beside the data, return them.

    ``metrics`` is any subset of :data:`flq_audit.metrics.METRICS` (``tl``, ``surrogate``,
    ``gram``, ``dynamics``, ``nc``). TL-dependent results are stored as ``target_linearity`` for the
    default parameters, or with a suffix such as ``target_linearity__pca256`` so that runs
    with other parameters sit side by side. Recomputing with the same parameters over the
    same done steps is a no-op. ``scheduler`` is ``threads`` (default), ``sync``, or a
    ``dask.distributed`` scheduler address.
    """
    from flq_audit._metrics_run import run_metrics

    return run_metrics(
        store, metrics=metrics, pca=pca, pca_threshold=pca_threshold, ridge=ridge,
        denominator=denominator,
        scheduler=scheduler,
    )


def export(
    store: str | Path, out: str | Path, *, with_activations: bool = False,
    with_grams: bool = False,
) -> Path:
    """Export metrics and coordinates (and optionally activations/Grams) to NetCDF4."""
    return to_netcdf(
        open_dataset(store), out, with_activations=with_activations, with_grams=with_grams
    )


def __getattr__(name: str) -> object:
    """``AuditPlan`` and ``AuditResult`` load the audit pipeline (and torch) on first use."""
    if name == "AuditPlan":
        from flq_audit._plan import AuditPlan

        return AuditPlan
    if name == "AuditResult":
        from flq_audit._runner import AuditResult

        return AuditResult
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "AuditPlan", "AuditResult", "audit", "compute_metrics", "export", "list_checkpoints",
    "open_store",
]
