"""The Python API: what the CLI and notebooks call.

Importing it is cheap: the store, the export and the audit pipeline (torch) load on first
use.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, overload

from flq_audit.constants import DEFAULT_PCA_THRESHOLD
from flq_audit.errors import OptionError
from flq_audit.options import (
    DEFAULT_CAPTURE,
    DEFAULT_RUN,
    CaptureOptions,
    FLOptions,
    RunOptions,
    SourceOptions,
    TextProbeOptions,
)

if TYPE_CHECKING:
    import xarray as xr

    from flq_audit.audit.extensions.base import StepExtension
    from flq_audit.audit.plan import AuditPlan
    from flq_audit.audit.step import AuditResult, Progress
    from flq_audit.audit.watch import WatchOptions, WatchReporter, WatchResult
    from flq_audit.metrics import TLOptions
    from flq_audit.reading import Report
    from flq_audit.reading._compare import compare
    from flq_audit.reading._runs import open_runs
    from flq_audit.sources import CheckpointRef
    from flq_audit.store import StoreLocation
    from flq_audit.store._repair import RepairResult
    from flq_audit.store._summary import StoreSummary


def list_checkpoints(source: str, *, steps: str = "all") -> list[CheckpointRef]:
    """Checkpoints of ``source`` selected by ``steps``."""
    from flq_audit.sources import open_source, select_steps

    refs = open_source(source).list_refs()
    wanted = set(select_steps([r.step for r in refs], steps))
    return [r for r in refs if r.step in wanted]


def plan_audit(
    source: str,
    *,
    steps: str = "all",
    model: str | None = None,
    probe: str | None = None,
    weights_only: bool = False,
    out: str | Path | StoreLocation | None = None,
    storage_options: dict[str, Any] | None = None,
    capture: CaptureOptions = DEFAULT_CAPTURE,
    hub: SourceOptions | None = None,
    text: TextProbeOptions | None = None,
    fl: FLOptions | None = None,
    run: RunOptions = DEFAULT_RUN,
    extensions: Sequence[StepExtension] = (),
    tags: Mapping[str, Any] | None = None,
) -> AuditPlan:
    """Resolve what an audit will do, reading no checkpoint's weights.

    The source, the step selection, the model, the probe and the layers are resolved, the
    probe is replayed once through the model, and every extension checks its inputs.
    ``out`` is a local path or an fsspec URL (``s3://bucket/x.zarr``, ``memory://x.zarr``);
    ``storage_options`` go to fsspec (credentials, ``client_kwargs``/``endpoint_url`` ...).
    ``weights_only`` stores Grams of every weight matrix with no model and no probe. ``run``
    matters here only for ``trust_remote_code`` (building a transformers model) and
    ``overwrite`` (which steps count as done). ``tags`` (``{"weight_decay": 0.5}``; the CLI's
    ``--tag KEY=VALUE``) label the store's run for :func:`flq_audit.open_runs`: text, numbers
    or booleans, merged into the store's ``tags`` as each writer finishes.

    Raises
    ------
    CheckpointNotFoundError
        The source does not exist or holds no checkpoints.
    StepSelectionError
        ``steps`` is malformed, or two checkpoints claim one step.
    ProbeError, ModelBuildError, LayerNotFoundError
        The probe, model or layer selection is invalid.
    """
    from flq_audit.audit.plan import plan_audit as resolve

    return resolve(source, steps=steps, model=model, probe=probe, weights_only=weights_only,
                   out=out, storage_options=storage_options, capture=capture, hub=hub,
                   text=text, fl=fl, run=run, extensions=extensions, tags=tags)


def run_audit(
    plan: AuditPlan, run: RunOptions = DEFAULT_RUN, progress: Progress | None = None
) -> AuditResult:
    """Write each planned step that is not yet done into the plan's store.

    Raises
    ------
    StoreMismatchError
        The output store belongs to another audit.

    Several writers may run on one store at once (processes, machines): each step is claimed
    in the store before it is written (:class:`flq_audit.store.StepClaims`), a step another
    writer holds is left to it, and a step whose writer died is taken over. With
    ``run.workers`` or ``run.scheduler`` the steps run as tasks of a dask cluster
    (:mod:`flq_audit.audit.distributed`), else one after the other in this process
    (:mod:`flq_audit.audit.runner`).
    """
    from flq_audit.audit.plan import warn_left_out

    warn_left_out(plan)
    if run.workers is not None or run.scheduler is not None:  # one dask task per step
        from flq_audit.audit.distributed import run_distributed

        return run_distributed(plan, run, progress)
    from flq_audit.audit.runner import run_audit as run_here

    return run_here(plan, run, progress)


@overload
def audit(
    source: str,
    *,
    steps: str = "all",
    model: str | None = None,
    probe: str | None = None,
    weights_only: bool = False,
    out: str | Path | StoreLocation | None = None,
    storage_options: dict[str, Any] | None = None,
    capture: CaptureOptions | None = None,
    hub: SourceOptions | None = None,
    text: TextProbeOptions | None = None,
    fl: FLOptions | None = None,
    run: RunOptions | None = None,
    extensions: Sequence[StepExtension] = (),
    tags: Mapping[str, Any] | None = None,
    dry_run: Literal[True],
    progress: Progress | None = None,
    **legacy: Any,
) -> AuditPlan: ...


@overload
def audit(
    source: str,
    *,
    steps: str = "all",
    model: str | None = None,
    probe: str | None = None,
    weights_only: bool = False,
    out: str | Path | StoreLocation | None = None,
    storage_options: dict[str, Any] | None = None,
    capture: CaptureOptions | None = None,
    hub: SourceOptions | None = None,
    text: TextProbeOptions | None = None,
    fl: FLOptions | None = None,
    run: RunOptions | None = None,
    extensions: Sequence[StepExtension] = (),
    tags: Mapping[str, Any] | None = None,
    dry_run: Literal[False] = False,
    progress: Progress | None = None,
    **legacy: Any,
) -> AuditResult: ...


def audit(
    source: str,
    *,
    steps: str = "all",
    model: str | None = None,
    probe: str | None = None,
    weights_only: bool = False,
    out: str | Path | StoreLocation | None = None,
    storage_options: dict[str, Any] | None = None,
    capture: CaptureOptions | None = None,
    hub: SourceOptions | None = None,
    text: TextProbeOptions | None = None,
    fl: FLOptions | None = None,
    run: RunOptions | None = None,
    extensions: Sequence[StepExtension] = (),
    tags: Mapping[str, Any] | None = None,
    dry_run: bool = False,
    progress: Progress | None = None,
    **legacy: Any,
) -> AuditPlan | AuditResult:
    """Audit a checkpoint sequence into a Zarr store: :func:`plan_audit`, then
    :func:`run_audit` (``dry_run=True`` returns the plan and writes nothing).

    The 0.1 keyword arguments (``layers=``, ``batch_size=``, ``text_task=``, ``fl_loss=``,
    ``no_probe=`` ...) still work and are folded into the option objects, with a
    ``DeprecationWarning``.

    Notes
    -----
    With ``fl=FLOptions(loss=..., lr=..., batches=...)`` the audit also replays each step's
    training batch and stores the virtual covariance shift, the Gram change to the next
    selected checkpoint, and the FL residuals (see
    :mod:`flq_audit.audit.extensions.fl`).
    """
    if legacy:
        from flq_audit._legacy_api import fold_legacy

        capture, hub, text, fl, run, weights_only = fold_legacy(
            legacy, capture, hub, text, fl, run, weights_only)
    run = run or RunOptions()
    plan = plan_audit(source, steps=steps, model=model, probe=probe, weights_only=weights_only,
                      out=out, storage_options=storage_options,
                      capture=capture or CaptureOptions(), hub=hub, text=text, fl=fl, run=run,
                      extensions=extensions, tags=tags)
    if dry_run:
        return plan
    return run_audit(plan, run, progress)


def watch(source: str, *, options: WatchOptions | None = None, run: RunOptions = DEFAULT_RUN,
          hub: SourceOptions | None = None, reporter: WatchReporter | None = None,
          sleep: Callable[[float], None] = time.sleep, **plan: Any) -> WatchResult:
    """Follow a run in progress: audit ``source`` now, then each checkpoint that appears,
    into one store, until ``options.until`` is audited (:mod:`flq_audit.audit.watch`).
    ``plan`` takes the other keyword arguments of :func:`plan_audit`; ``sleep`` waits
    between polls."""
    from flq_audit.audit.watch import AuditCalls, WatchOptions
    from flq_audit.audit.watch import watch as follow

    calls = AuditCalls(plan=plan_audit, run=run_audit, metrics=compute_metrics)
    return follow(source, calls=calls, options=options or WatchOptions(), run=run, hub=hub,
                  reporter=reporter, sleep=sleep, **plan)


def open_store(path: str | Path | StoreLocation, *, dask: bool = True,
               storage_options: dict[str, Any] | None = None) -> xr.Dataset:
    """Open a store lazily; ``ds.activations.sel(step=s, layer=l)`` gives one layer's features.

    ``path`` is a local path or an fsspec URL (``s3://bucket/x.zarr``) with fsspec's
    ``storage_options``. ``dask=False`` reads without dask (no task graph, no scheduler): for
    small selections.
    """
    from flq_audit.store import open_dataset

    return open_dataset(path, dask=dask, storage_options=storage_options)


def store_summary(path: str | Path | StoreLocation, *,
                  storage_options: dict[str, Any] | None = None) -> StoreSummary:
    """What ``flq-audit show`` prints: the record ``open_store(path).flq.summary()`` gives,
    read with zarr alone (no xarray import: fast enough to poll)."""
    from flq_audit.store._summary import read_summary

    return read_summary(path, storage_options=storage_options)


def compute_metrics(
    store: str | Path | StoreLocation,
    *,
    metrics: Sequence[str] = ("tl",),
    pca: int | None = None,
    pca_threshold: int = DEFAULT_PCA_THRESHOLD,
    ridge: float = 0.0,
    denominator: str = "column",
    scheduler: str | None = None,
    tl: TLOptions | None = None,
    recompute: bool = False,
    storage_options: dict[str, Any] | None = None,
) -> xr.Dataset:
    """Compute metrics lazily from the store, persist them beside the data, return them.

    ``metrics`` names registered groups (:func:`flq_audit.metrics.registry`: ``tl``,
    ``surrogate``, ``gram``, ``dynamics``, ``nc`` and any plugin). The TL parameters come
    from ``tl`` (a :class:`~flq_audit.metrics.TLOptions`) or from ``pca``, ``pca_threshold``,
    ``ridge`` and ``denominator``; they are stored as attributes, and results for non-default
    parameters sit beside the default ones (``target_linearity__pca256``). Recomputing with
    the same parameters over the same done steps is a no-op unless ``recompute``; a group
    whose write was interrupted is recomputed. The store is locked before any computation
    (a local store by its kernel lock, a URL store by a ``metrics`` claim with a lease): a
    second run on the same store is refused at once.
    ``scheduler`` is ``threads``, ``sync``, or a ``dask.distributed`` address; by default the
    active ``dask.distributed`` client when there is one (``with Client(...):``), else threads.
    """
    from flq_audit.metrics import TLOptions, run_metrics
    from flq_audit.store import StoreLocation, open_dataset

    given = TLOptions(pca=pca, pca_threshold=pca_threshold, ridge=ridge,
                      denominator=denominator)  # type: ignore[arg-type]  # checked by __post_init__
    if tl is not None and given != TLOptions():
        raise OptionError("pass the TL parameters either as tl=TLOptions(...) or as pca, "
                          "pca_threshold, ridge and denominator, not both")
    location = StoreLocation.parse(store, storage_options)
    open_dataset(location)  # a missing or foreign store is reported before anything is locked
    with _metrics_lock(location):
        # the engine writes through ``location.zarr_store()`` (local or URL)
        return run_metrics(location, open_dataset(location),  # type: ignore[arg-type]  # a StoreLocation, see above
                           metrics=metrics, tl=tl or given,
                           scheduler=scheduler, recompute=recompute)


def repair_store(store: str | Path | StoreLocation, *,
                 storage_options: dict[str, Any] | None = None) -> RepairResult:
    """Finish a store whose last writer died before finishing it: write the ``checkpoints``
    provenance of its done steps and consolidate its metadata (what the last writer to
    finish does). Refused while an audit or a metrics run holds the store."""
    from flq_audit.store import StoreLocation, open_dataset
    from flq_audit.store._repair import repair_store as repair

    location = StoreLocation.parse(store, storage_options)
    open_dataset(location)  # a missing or foreign store is reported before anything else
    with _metrics_lock(location):
        return repair(location)


@contextmanager
def _metrics_lock(location: StoreLocation) -> Iterator[None]:
    """One metrics run per store: the kernel lock (local) or a ``metrics`` claim (URL)."""
    from flq_audit.errors import StoreLockedError
    from flq_audit.store import StepClaims, store_lock

    if location.is_local:
        with store_lock(location.path):
            yield
        return
    claims = StepClaims(location)
    try:
        with claims.hold("metrics", keep=False) as mine:
            if not mine:
                held = claims.read("metrics")
                raise StoreLockedError(
                    f"store {location.display!r} is being written by another metrics run "
                    f"({held.owner if held else 'unknown'})", path=location.display,
                    hint="Wait for it to finish; a claim of a killed run expires after its "
                    "lease.")
            yield
    finally:
        claims.close()


def export(
    store: str | Path | StoreLocation, out: str | Path, *, with_activations: bool = False,
    with_grams: bool = False, storage_options: dict[str, Any] | None = None,
) -> Path:
    """Export metrics and coordinates (and optionally activations/Grams) to NetCDF4.

    ``store`` is a local path or an fsspec URL; ``out`` is a local file."""
    from flq_audit.reading import to_netcdf
    from flq_audit.store import open_dataset

    return to_netcdf(
        open_dataset(store, storage_options=storage_options), out,
        with_activations=with_activations, with_grams=with_grams,
    )


def __getattr__(name: str) -> object:
    """``AuditPlan`` and ``AuditResult`` load the audit pipeline (and torch) on first use;
    ``open_runs`` and ``compare`` (:mod:`flq_audit.reading`) load xarray."""
    if name in ("open_runs", "compare"):
        import flq_audit.reading

        return getattr(flq_audit.reading, name)
    if name in ("AuditPlan", "AuditResult"):
        import flq_audit.audit

        return getattr(flq_audit.audit, name)
    if name == "HubOptions":  # the old name of SourceOptions (warns)
        import flq_audit.options

        return flq_audit.options.HubOptions
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "AuditPlan", "AuditResult", "CaptureOptions", "FLOptions", "RunOptions", "SourceOptions",
    "TextProbeOptions", "audit", "compare", "compute_metrics", "export", "list_checkpoints",
    "open_runs", "open_store", "plan_audit", "report", "run_audit", "store_summary", "watch",
]


def report(store: str | Path | StoreLocation, out: str | Path | None = None, *,
           storage_options: dict[str, Any] | None = None) -> Report:
    """Compute every registered metric group not stored yet (as :func:`compute_metrics`), then
    write the report folder ``out`` (default ``<store>-report``): figures, ``metrics.nc`` and
    ``index.html``. Returns what the report says (:class:`flq_audit.reading.Report`)."""
    from flq_audit.reading import prepare_folder, report_groups, write_folder
    from flq_audit.store import StoreLocation

    location = StoreLocation.parse(store, storage_options)
    folder = prepare_folder(location, out)
    groups = report_groups(open_store(location))
    return write_folder(location, folder, compute_metrics(location, metrics=groups))
