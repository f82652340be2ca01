"""Run an audit plan: for each step, fetch → load → replay → extensions → commit.

The plan is never changed; what a step needs (a reloaded transformers model, the loaded
weights) lives in the step's :class:`StepContext`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from flq_audit import __version__
from flq_audit._faults import fault_point
from flq_audit.audit.extensions.base import StepContext
from flq_audit.audit.moved import warn_moved
from flq_audit.audit.plan import AuditPlan, checkpoint_folder
from flq_audit.audit.prefetch import Fetched, Prefetcher, checksums, checksums_in_background
from flq_audit.capture import as_matrix, replay, resolve_device, weight_matrix
from flq_audit.capture_params import layers_of, weight_key
from flq_audit.errors import CaptureError, FlqAuditError, ModelBuildError, WeightsError
from flq_audit.models import BuiltModel, load_weights
from flq_audit.models.hf import load_hf_checkpoint
from flq_audit.options import DEFAULT_RUN, RunOptions
from flq_audit.sources import CheckpointRef
from flq_audit.store import (
    StepClaims,
    StepWriter,
    create_or_resume,
)
from flq_audit.store._location import StoreLocation
from flq_audit.store._writer import StepTransaction
from flq_audit.weights import load_state_dict

#: Errors that fail one step (recorded in ``error(step)``) without stopping the audit.
STEP_ERRORS = (WeightsError, ModelBuildError, CaptureError)


class Progress(Protocol):
    """Callbacks the runner reports to; the CLI renders them as progress bars."""

    def start(self, total_steps: int, batches_per_step: int) -> None: ...
    def step_started(self, ref: CheckpointRef) -> None: ...
    def batch_done(self) -> None: ...
    def step_finished(self, ref: CheckpointRef, error: str | None) -> None: ...


class _Silent:
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


def run_audit(
    plan: AuditPlan, run: RunOptions = DEFAULT_RUN, progress: Progress | None = None,
    *, version: str = __version__,
) -> AuditResult:
    """Write every selected step that is not yet done; a rerun resumes where this one stopped.

    Each extension's ``after_audit`` runs at the end (the FL residual warns there when the
    checkpoints were not plain SGD steps).
    """
    if run.workers is not None or run.scheduler is not None:  # one dask task per step
        from flq_audit.audit.distributed import run_distributed

        result: AuditResult = run_distributed(plan, run, progress, version=version)
    else:
        result = _run_here(plan, run, progress, version=version)
    for ext in plan.extensions:
        after = getattr(ext, "after_audit", None)  # optional in the protocol
        if callable(after):
            after(plan)
    return result


def _run_here(
    plan: AuditPlan, run: RunOptions, progress: Progress | None, *, version: str,
) -> AuditResult:
    """The audit in this process, one step after the other."""
    progress = progress or _Silent()
    device = resolve_device(run.device)
    result = AuditResult(store=plan.store)
    claims = StepClaims(plan.store)
    try:
        writer = create_or_resume(plan.store, plan.layout, overwrite=run.overwrite,
                                  version=version, claims=claims)
        reopen_moved(plan, run, writer)
        done = set(writer.done_steps())
        todo = [r for r in plan.refs if r.step not in done]
        result.skipped = [r.step for r in plan.refs if r.step in done]
        n_batches = -(-plan.probe.n_samples // run.batch_size) if plan.probe is not None else 0
        progress.start(len(todo), n_batches)
        set_threads(run.threads)
        prefetcher = (Prefetcher(todo, lambda ref: _prefetched(plan, ref, run, done))
                      if run.prefetch else None)
        try:
            first_pass = prefetcher  # later passes retry steps another writer held
            while todo:
                todo = _claimed_steps(plan, writer, claims, todo, run, device, progress, result,
                                      first_pass)
                if first_pass is not None:
                    first_pass.close()
                    first_pass = None
            writer.close()
        finally:
            if prefetcher is not None:
                prefetcher.close()
            writer.abandon()
        result.skipped.sort()
        writer.finish()
    finally:
        claims.close()
    return result


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


def _is_copy(plan: AuditPlan, ref: CheckpointRef, done: set[int] | frozenset[int]) -> bool:
    """Whether the step copies an earlier step's values (identical files) when it is reached."""
    original = dict(plan.layout.duplicates).get(ref.step)
    if original is None or not all(ext.copy_duplicates for ext in plan.extensions):
        return False
    return original in done or any(r.step == original for r in plan.refs)


def _prefetched(
    plan: AuditPlan, ref: CheckpointRef, run: RunOptions, done: set[int]
) -> Fetched | None:
    """What the prefetch thread loads for ``ref``; ``None`` for a step that will be a copy."""
    return None if _is_copy(plan, ref, done) else fetch_and_load(plan, ref, run)


def fetch_and_load(
    plan: AuditPlan, ref: CheckpointRef, run: RunOptions, *, hash_later: bool = False
) -> Fetched:
    """Fetch a step's files, checksum them and load its weights; errors are kept, not raised.

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
    try:
        if plan.mode == "hf":
            fetched.built = load_hf_checkpoint(
                checkpoint_folder(plan.source, ref) or fetched.paths[0].parent, step=ref.step,
                trust_remote_code=run.trust_remote_code)
        else:
            fetched.state = load_state_dict(fetched.paths, trust_pickle=run.trust_pickle,
                                            step=ref.step)
    except Exception as err:
        fetched.load_error = err
    return fetched


def _claimed_steps(
    plan: AuditPlan, writer: StepWriter, claims: StepClaims, todo: list[CheckpointRef],
    run: RunOptions, device: str, progress: Progress, result: AuditResult,
    prefetcher: Prefetcher[Fetched | None] | None = None,
) -> list[CheckpointRef]:
    """Write each step of ``todo`` this writer can claim; return those another writer holds.

    A step whose claim is finished (another writer wrote it) is counted as skipped; the
    returned steps are retried after a pause, until their writer finishes them or its lease
    expires (then this writer takes them over). ``prefetcher`` loads the steps of ``todo``
    in order, one ahead.
    """
    later: list[CheckpointRef] = []
    for ref in todo:
        fetched = prefetcher.next() if prefetcher is not None else None
        try:
            _claimed_step(plan, writer, claims, ref, run, device, progress, result, later,
                          fetched, prefetcher.peek if prefetcher is not None else None)
        finally:
            del fetched  # this step's weights go before the next one loads
            if prefetcher is not None:
                prefetcher.release()
    if later:
        writer.wait()
        time.sleep(min(1.0, claims.lease_s / 4))
        finished = set(writer.done_steps())
        result.skipped.extend(r.step for r in later if r.step in finished)
        later = [r for r in later if r.step not in finished]
    return later


def _claimed_step(
    plan: AuditPlan, writer: StepWriter, claims: StepClaims, ref: CheckpointRef,
    run: RunOptions, device: str, progress: Progress, result: AuditResult,
    later: list[CheckpointRef], fetched: Fetched | None,
    peek: Callable[[], Fetched | None] | None = None,
) -> None:
    """Write one step if this writer can claim it; else note it in ``later`` or as skipped."""
    if not claims.claim(ref.step):
        held = claims.read(ref.step)
        closed = held is not None and held.finished
        if closed and ref.step in writer.done_steps():
            result.skipped.append(ref.step)
            return
        if not (closed and claims.reopen(ref.step)):  # a finished claim, step not done
            later.append(ref)
            return
    progress.step_started(ref)
    try:
        _one_step(plan, writer, ref, run, device, progress, fetched, peek)
    except STEP_ERRORS as err:
        claims.release(ref.step)
        result.failed[ref.step] = str(err)
        progress.step_finished(ref, str(err))
        return
    except BaseException:
        claims.release(ref.step)
        raise
    claims.finish(ref.step)
    result.written.append(ref.step)
    progress.step_finished(ref, None)
    plan.source.release(ref)  # --cache drop: the step is written, its files can go


def _one_step(
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
    paths = fetched.paths
    position = plan.refs.index(ref)
    next_ref = plan.refs[position + 1] if position + 1 < len(plan.refs) else None
    with writer.step(index, files=[str(p) for p in paths], sha256=fetched.sha256,
                     commit=ref.commit) as step:
        if fetched.load_error is not None:
            raise fetched.load_error
        if plan.probe is None:
            ctx = _weights_only(plan, ref, index, next_ref, run, fetched, step)
        else:
            ctx = _replayed(plan, ref, index, next_ref, run, device, fetched, step, progress,
                            _prefetched_state(peek, next_ref))
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


def _weights_only(
    plan: AuditPlan, ref: CheckpointRef, index: int, next_ref: CheckpointRef | None,
    run: RunOptions, fetched: Fetched, step: StepTransaction,
) -> StepContext:
    state = fetched.state
    weights = {}
    for info in plan.layers:
        tensor = state.get(f"{info.name}.weight")
        if tensor is None:
            raise WeightsError(f"step {ref.step} ({ref.label}): no tensor {info.name}.weight",
                               step=ref.step, layer=info.name)
        weights[info.name] = as_matrix(tensor, conv1d=info.kind == "Conv1D")
    step.write_grams(list(enumerate(weights.values())))
    return StepContext(plan=plan, ref=ref, index=index, next_ref=next_ref, run=run,
                       weights=weights, state=state)


def _load_model(
    plan: AuditPlan, ref: CheckpointRef, fetched: Fetched
) -> tuple[BuiltModel, Mapping[str, Any]]:
    """The model holding this step's weights, and the state dict it was loaded from."""
    if plan.mode == "hf":
        return fetched.built, {}
    assert plan.built is not None
    return plan.built, load_weights(plan.built, dict(fetched.state), step=ref.step)


def _replayed(
    plan: AuditPlan, ref: CheckpointRef, index: int, next_ref: CheckpointRef | None,
    run: RunOptions, device: str, fetched: Fetched, step: StepTransaction, progress: Progress,
    next_state: Callable[[], Mapping[str, Any] | None],
) -> StepContext:
    if plan.capture.activation_dtype == "float64" and plan.mode == "module":
        plan.built.module.double()  # type: ignore[union-attr]  # before loading: float64 checkpoints load unrounded
    built, state = _load_model(plan, ref, fetched)
    layers = layers_of(built.module, plan.layers)
    weights = {name: weight_matrix(layer, state.get(weight_key(name, layer)))
               for name, layer in layers.items()}
    ctx = StepContext(plan=plan, ref=ref, index=index, next_ref=next_ref, run=run, built=built,
                      layers=layers, weights=weights, state=state, next_state=next_state)
    # float64 Grams run on the writer's threads while the probe replays
    step.write_grams([(i, weights[info.name]) for i, info in enumerate(plan.layers)
                      if info.name in weights])  # residual-stream rows have no weight, no Gram
    outputs = frozenset().union(*(ext.replay_outputs for ext in plan.extensions))
    assert plan.probe is not None
    try:
        batches = replay(
            built.module, layers, plan.probe, batch_size=run.batch_size, device=device,
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
