"""One step of an audit: fetch and load its checkpoint, replay the probe, run the extensions,
commit. The sequential runner and the dask workers both call :func:`run_step`.

The plan is never changed: the step's model comes from ``plan.loader`` (a model of its own,
holding the step's weights) and lives in the step's :class:`StepContext`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Protocol, overload

import numpy as np

from flq_audit._faults import fault_point
from flq_audit.audit.extensions.base import StepContext
from flq_audit.audit.moved import warn_moved
from flq_audit.audit.prefetch import Fetched, checksums, checksums_in_background
from flq_audit.capture import as_matrix, replay, weight_matrix
from flq_audit.capture.params import ParameterLayer, layers_of, weight_key
from flq_audit.errors import CaptureError, FlqAuditError, ModelBuildError, WeightsError
from flq_audit.options import RunOptions
from flq_audit.sources import CheckpointRef
from flq_audit.store._location import StoreLocation

if TYPE_CHECKING:
    from torch import nn

    from flq_audit.audit.plan import AuditPlan
    from flq_audit.models import BuiltModel
    from flq_audit.store import StepWriter
    from flq_audit.store._writer import StepTransaction

#: Errors that fail one step (recorded in ``error(step)``) without stopping the audit.
STEP_ERRORS = (WeightsError, ModelBuildError, CaptureError)


class Progress(Protocol):
    """Callbacks an audit reports to; the CLI renders them as progress bars."""

    def start(self, total_steps: int, batches_per_step: int) -> None: ...
    def step_started(self, ref: CheckpointRef) -> None: ...
    def batch_done(self) -> None: ...
    def step_finished(self, ref: CheckpointRef, error: str | None) -> None: ...


class SilentProgress:
    """A :class:`Progress` that reports nothing."""

    def start(self, total_steps: int, batches_per_step: int) -> None: ...
    def step_started(self, ref: CheckpointRef) -> None: ...
    def batch_done(self) -> None: ...
    def step_finished(self, ref: CheckpointRef, error: str | None) -> None: ...


@dataclass
class AuditResult:
    """What an audit did."""

    store: StoreLocation
    written: list[int] = field(default_factory=list)
    skipped: list[int] = field(default_factory=list)
    failed: dict[int, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, object]:
        return {"store": str(self.store), "written": self.written, "skipped": self.skipped,
                "failed": {str(k): v for k, v in self.failed.items()}}


def reopen_moved(plan: AuditPlan, run: RunOptions, writer: StepWriter) -> None:
    """Steps whose Hub branch moved since they were written: re-audited with
    ``--reaudit-moved`` (their ``done`` flag cleared), else one warning names them."""
    if not plan.moved:
        return
    if run.reaudit_moved:
        writer.reopen([m.step for m in plan.moved])
    else:
        warn_moved(plan)


def set_threads(threads: int | None) -> None:
    """torch's intra-op threads (``--threads``); ``None`` keeps torch's default."""
    if threads is not None:
        import torch

        torch.set_num_threads(threads)


def after_audit(plan: AuditPlan) -> None:
    """Each extension's optional ``after_audit``, once the steps are written."""
    for ext in plan.extensions:
        after = getattr(ext, "after_audit", None)  # optional in the protocol
        if callable(after):
            after(plan)


def is_copy(plan: AuditPlan, ref: CheckpointRef, done: set[int] | frozenset[int]) -> bool:
    """Whether the step copies an earlier step's values (identical files) when it is reached."""
    original = dict(plan.layout.duplicates).get(ref.step)
    if original is None or not all(ext.copy_duplicates for ext in plan.extensions):
        return False
    return original in done or any(r.step == original for r in plan.refs)


def reads_ahead(plan: AuditPlan) -> bool:
    """Whether the prefetch thread reads the next step's weights too, not only its files:
    when the FL residual compares each step with the next (it reuses them). Otherwise the
    weights are read when the step starts, after the last step's are dropped, so that one
    checkpoint's weights are resident, not two; the fetch (the slow part of a remote
    source) and the checksums still run ahead."""
    return plan.fl is not None


def prefetched(
    plan: AuditPlan, ref: CheckpointRef, run: RunOptions, done: set[int]
) -> Fetched | None:
    """What the prefetch thread makes ready for ``ref`` (its files and checksums, and its
    weights when :func:`reads_ahead`); ``None`` for a step that will be a copy."""
    if is_copy(plan, ref, done):
        return None
    return fetch_and_load(plan, ref, run, read=reads_ahead(plan))


def fetch_and_load(
    plan: AuditPlan, ref: CheckpointRef, run: RunOptions, *, hash_later: bool = False,
    read: bool = True,
) -> Fetched:
    """Fetch a step's files, checksum them and (with ``read``) read its weights
    (``plan.loader.read``); errors are kept, not raised.

    With ``hash_later`` the checksums are computed on a thread of their own (a future the
    step's commit waits for).
    """
    fetched = Fetched(ref)
    try:
        fetched.paths = plan.source.fetch(ref)
        fetched.sha256 = (checksums_in_background(ref, fetched.paths) if hash_later
                          else checksums(ref, fetched.paths))
    except Exception as err:
        fetched.fetch_error = err
        return fetched
    if read:
        read_weights(plan, fetched, run)
    return fetched


def read_weights(plan: AuditPlan, fetched: Fetched, run: RunOptions) -> None:
    """Read the fetched files' weights into ``fetched`` (once); an error is kept in
    ``load_error``, not raised."""
    if fetched.read:
        return
    fetched.read = True
    try:
        plan.loader.read(plan.source, fetched, run)
    except Exception as err:
        fetched.load_error = err


def run_step(
    plan: AuditPlan, writer: StepWriter, ref: CheckpointRef, run: RunOptions, device: str,
    progress: Progress, fetched: Fetched | None = None,
    peek: Callable[[], Fetched | None] | None = None,
) -> None:
    """Write one step; ``fetched`` is what a prefetch thread already loaded (else load here),
    ``peek`` what it loads next (extensions that compare with the next step reuse it)."""
    index = writer.index_of(ref.step)
    original = dict(plan.layout.duplicates).get(ref.step)
    copyable = all(ext.copy_duplicates for ext in plan.extensions)
    if original is not None and copyable and original in writer.done_steps():
        with writer.step(index, files=list(ref.files), sha256=ref.lfs_sha256,
                         commit=ref.commit) as step:
            step.copy_from(writer.index_of(original))
        return
    if fetched is None:
        fetched = fetch_and_load(plan, ref, run, hash_later=True)
    if fetched.fetch_error is not None:
        raise fetched.fetch_error
    read_weights(plan, fetched, run)  # the prefetcher fetched its files only
    position = plan.refs.index(ref)
    next_ref = plan.refs[position + 1] if position + 1 < len(plan.refs) else None
    with writer.step(index, files=[str(p) for p in fetched.paths], sha256=fetched.sha256,
                     commit=ref.commit) as step:
        if fetched.load_error is not None:
            raise fetched.load_error
        model = plan.loader.load(fetched)
        base = StepContext(plan=plan, ref=ref, index=index, next_ref=next_ref, run=run,
                           state=model.state, next_state=_prefetched_state(peek, next_ref))
        if model.built is None or plan.probe is None:
            ctx = _weights_only(base, step)
        else:
            ctx = _replayed(base, model.built, plan.probe, device, step, progress)
        for ext in plan.extensions:
            for name, values in ext.on_step(ctx).items():
                step.write(name, values)


def _prefetched_state(
    peek: Callable[[], Fetched | None] | None, next_ref: CheckpointRef | None
) -> Callable[[], Mapping[str, Any] | None]:
    """The next step's loaded state dict if the prefetcher holds it, else ``None``."""

    def state() -> Mapping[str, Any] | None:
        following = peek() if peek is not None and next_ref is not None else None
        if following is None or following.ref != next_ref or not following.state:
            return None
        return following.state

    return state


def _weights_only(base: StepContext, step: StepTransaction) -> StepContext:
    """The step's Grams from its state dict alone."""
    ref, weights = base.ref, {}
    for info in base.plan.layers:
        tensor = base.state.get(f"{info.name}.weight")
        if tensor is None:
            raise WeightsError(f"step {ref.step} ({ref.label}): no tensor {info.name}.weight",
                               step=ref.step, layer=info.name)
        weights[info.name] = as_matrix(tensor, conv1d=info.kind == "Conv1D")
    step.write_grams(list(enumerate(weights.values())))
    return replace(base, weights=weights)


class StepWeights(Mapping[str, Any]):
    """The captured layers' weight matrices, made when asked for (none is kept): from the
    step's state, the checkpoint's own tensors, when it holds the weight under the layer's
    key or a tied twin's (a model replaying in half precision holds them rounded), else
    from the model."""

    def __init__(self, module: nn.Module, layers: Mapping[str, Any],
                 state: Mapping[str, Any]) -> None:
        self.layers, self.state = layers, state
        self.twins: dict[int, list[str]] = {}
        for name, param in module.named_parameters(remove_duplicate=False):
            self.twins.setdefault(id(param), []).append(name)

    def _stored(self, name: str) -> Any:
        layer = self.layers[name]
        key = weight_key(name, layer)
        if not self.state or key in self.state:
            return self.state.get(key)
        param = layer.parameter if isinstance(layer, ParameterLayer) else getattr(layer, "weight",
                                                                                    None)
        twin = next((k for k in self.twins.get(id(param), ()) if k in self.state), None)
        return None if twin is None else self.state[twin]

    def __getitem__(self, name: str) -> Any:
        return weight_matrix(self.layers[name], self._stored(name))

    def __contains__(self, name: object) -> bool:
        return name in self.layers

    def __iter__(self) -> Iterator[str]:
        return iter(self.layers)

    def __len__(self) -> int:
        return len(self.layers)


class _Pairs(Sequence[tuple[int, Any]]):
    """``(layer index, weight matrix)`` pairs whose matrices are made when reached."""

    def __init__(self, names: list[tuple[int, str]], weights: Mapping[str, Any]) -> None:
        self.names, self.weights = names, weights

    def __len__(self) -> int:
        return len(self.names)

    @overload
    def __getitem__(self, i: int) -> tuple[int, Any]: ...
    @overload
    def __getitem__(self, i: slice) -> list[tuple[int, Any]]: ...
    def __getitem__(self, i: int | slice) -> tuple[int, Any] | list[tuple[int, Any]]:
        if isinstance(i, slice):
            return [(index, self.weights[name]) for index, name in self.names[i]]
        index, name = self.names[i]
        return index, self.weights[name]


def _replayed(
    base: StepContext, built: BuiltModel, probe: Any, device: str, step: StepTransaction,
    progress: Progress,
) -> StepContext:
    """Replay the probe through the step's model, writing rows and Grams as they come."""
    plan, ref, run = base.plan, base.ref, base.run
    layers = layers_of(built.module, plan.layers)
    weights = StepWeights(built.module, layers, base.state)
    ctx = replace(base, built=built, layers=layers, weights=weights)
    # float64 Grams run on the writer's threads while the probe replays, one matrix at a time
    step.write_grams(_Pairs([(i, info.name) for i, info in enumerate(plan.layers)
                             if info.name in weights], weights))  # hidden states: no Gram
    outputs = frozenset().union(*(ext.replay_outputs for ext in plan.extensions))
    try:
        batches = replay(
            built.module, layers, probe, batch_size=run.batch_size, device=device,
            dtype=np.dtype(plan.capture.activation_dtype),
            predictions="predictions" in outputs, hidden_states="hidden_states" in outputs,
        )
        for batch_index, (start, stop, captured) in enumerate(batches):
            for layer_index, info in enumerate(plan.layers):
                step.write_rows(layer_index, start, captured[info.name])
            for ext in plan.extensions:
                ext.on_batch(ctx, start, stop, captured)
            fault_point("step-batch", step=ref.step, batch=batch_index)
            progress.batch_done()
    except FlqAuditError:
        raise
    except Exception as err:
        raise CaptureError(
            f"step {ref.step} ({ref.label}): replaying the probe failed ({err})", step=ref.step
        ) from err
    return ctx


__all__ = ["STEP_ERRORS", "AuditResult", "Progress", "SilentProgress", "after_audit",
           "fetch_and_load", "is_copy", "prefetched", "read_weights", "reads_ahead",
           "reopen_moved", "run_step", "set_threads"]
