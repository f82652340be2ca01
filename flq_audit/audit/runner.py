"""Run an audit plan: for each step, fetch → load → replay → extensions → commit.

The plan is never changed; what a step needs (a reloaded transformers model, the loaded
weights) lives in the step's :class:`StepContext`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from flq_audit import __version__
from flq_audit._faults import fault_point
from flq_audit.audit.extensions.base import StepContext
from flq_audit.audit.plan import AuditPlan, checkpoint_folder
from flq_audit.capture import as_matrix, gram_of_matrix, replay, resolve_device, weight_matrix
from flq_audit.errors import CaptureError, FlqAuditError, ModelBuildError, WeightsError
from flq_audit.models import BuiltModel, load_weights
from flq_audit.models.hf import load_hf_checkpoint
from flq_audit.options import DEFAULT_RUN, RunOptions
from flq_audit.sources import CheckpointRef
from flq_audit.store import (
    StepWriter,
    consolidate,
    create_or_resume,
    fixed_width_strings_allowed,
    store_lock,
)
from flq_audit.store._writer import StepTransaction
from flq_audit.weights import file_sha256, load_state_dict

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

    store: Path
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
    """Write every selected step that is not yet done; a rerun resumes where this one stopped."""
    if run.workers is not None or run.scheduler is not None:  # one dask task per step
        from flq_audit.audit.distributed import run_distributed

        return run_distributed(plan, run, progress, version=version)
    progress = progress or _Silent()
    device = resolve_device(run.device)
    result = AuditResult(store=plan.store)
    with store_lock(plan.store):
        writer = create_or_resume(plan.store, plan.layout, overwrite=run.overwrite,
                                  version=version)
        done = set(writer.done_steps())
        todo = [r for r in plan.refs if r.step not in done]
        result.skipped = [r.step for r in plan.refs if r.step in done]
        n_batches = -(-plan.probe.n_samples // run.batch_size) if plan.probe is not None else 0
        progress.start(len(todo), n_batches)
        try:
            for ref in todo:
                progress.step_started(ref)
                try:
                    _one_step(plan, writer, ref, run, device, progress)
                except STEP_ERRORS as err:
                    result.failed[ref.step] = str(err)
                    progress.step_finished(ref, str(err))
                    continue
                result.written.append(ref.step)
                progress.step_finished(ref, None)
                plan.source.release(ref)  # --cache drop: the step is written, its files can go
            writer.close()
        finally:
            writer.abandon()
        with fixed_width_strings_allowed():  # rewriting the group metadata lists the <U arrays
            writer.group.attrs["checkpoints"] = json.dumps(writer.step_provenance())
        consolidate(plan.store)
    return result


def _one_step(
    plan: AuditPlan, writer: StepWriter, ref: CheckpointRef, run: RunOptions, device: str,
    progress: Progress,
) -> None:
    index = writer.index_of(ref.step)
    original = dict(plan.layout.duplicates).get(ref.step)
    copyable = all(ext.copy_duplicates for ext in plan.extensions)
    if original is not None and copyable and original in writer.done_steps():
        with writer.step(index, files=list(ref.files), sha256=ref.lfs_sha256) as step:
            step.copy_from(writer.index_of(original))
        return
    paths = plan.source.fetch(ref)
    shas = [file_sha256(p) for p in paths]
    position = plan.refs.index(ref)
    next_ref = plan.refs[position + 1] if position + 1 < len(plan.refs) else None
    with writer.step(index, files=[str(p) for p in paths], sha256=shas) as step:
        if plan.probe is None:
            ctx = _weights_only(plan, ref, index, next_ref, run, paths, step)
        else:
            ctx = _replayed(plan, ref, index, next_ref, run, device, paths, step, progress)
        for ext in plan.extensions:
            for name, values in ext.on_step(ctx).items():
                step.write(name, values)


def _weights_only(
    plan: AuditPlan, ref: CheckpointRef, index: int, next_ref: CheckpointRef | None,
    run: RunOptions, paths: list[Path], step: StepTransaction,
) -> StepContext:
    state = load_state_dict(paths, trust_pickle=run.trust_pickle, step=ref.step)
    weights = {}
    for layer_index, info in enumerate(plan.layers):
        tensor = state.get(f"{info.name}.weight")
        if tensor is None:
            raise WeightsError(f"step {ref.step} ({ref.label}): no tensor {info.name}.weight",
                               step=ref.step, layer=info.name)
        weights[info.name] = as_matrix(tensor, conv1d=info.kind == "Conv1D")
        step.write_gram(layer_index, gram_of_matrix(weights[info.name]))
    return StepContext(plan=plan, ref=ref, index=index, next_ref=next_ref, run=run,
                       weights=weights, state=state)


def _load_model(
    plan: AuditPlan, ref: CheckpointRef, run: RunOptions, paths: list[Path]
) -> tuple[BuiltModel, Mapping[str, Any]]:
    """The model holding this step's weights, and the state dict it was loaded from."""
    if plan.mode == "hf":
        built = load_hf_checkpoint(checkpoint_folder(plan.source, ref) or paths[0].parent,
                                   step=ref.step, trust_remote_code=run.trust_remote_code)
        return built, {}
    assert plan.built is not None
    state = load_state_dict(paths, trust_pickle=run.trust_pickle, step=ref.step)
    return plan.built, load_weights(plan.built, state, step=ref.step)


def _replayed(
    plan: AuditPlan, ref: CheckpointRef, index: int, next_ref: CheckpointRef | None,
    run: RunOptions, device: str, paths: list[Path], step: StepTransaction, progress: Progress,
) -> StepContext:
    built, state = _load_model(plan, ref, run, paths)
    modules = dict(built.module.named_modules())
    layers = {li.name: modules[li.name] for li in plan.layers if li.name in modules}
    weights = {name: weight_matrix(module, state.get(f"{name}.weight"))
               for name, module in layers.items()}
    ctx = StepContext(plan=plan, ref=ref, index=index, next_ref=next_ref, run=run, built=built,
                      layers=layers, weights=weights, state=state)
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
    for layer_index, info in enumerate(plan.layers):
        if info.name in weights:  # residual-stream rows have no weight, no Gram
            step.write_gram(layer_index, gram_of_matrix(weights[info.name]))
    return ctx
