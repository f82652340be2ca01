"""Run an audit plan: for each step, load, replay, write, mark done."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from flq_audit._faults import fault_point
from flq_audit._plan import AuditPlan, checkpoint_folder
from flq_audit.capture import PREDICTION, gram, gram_of_tensor, replay, weight_matrix
from flq_audit.errors import CaptureError, FlqAuditError, ModelBuildError, WeightsError
from flq_audit.feature_learning import fl_quantities
from flq_audit.models import load_weights, map_keys
from flq_audit.models.hf import load_hf_checkpoint
from flq_audit.sources import CheckpointRef
from flq_audit.store import StepWriter, consolidate, create_or_resume, store_lock
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
    plan: AuditPlan,
    *,
    overwrite: bool,
    batch_size: int,
    device: str,
    trust_pickle: bool,
    version: str,
    progress: Progress | None = None,
) -> AuditResult:
    """Write every selected step that is not yet done; a rerun resumes where this one stopped."""
    progress = progress or _Silent()
    result = AuditResult(store=plan.store)
    with store_lock(plan.store):
        writer = create_or_resume(plan.store, plan.layout, overwrite=overwrite, version=version)
        done = set(writer.done_steps())
        todo = [r for r in plan.refs if r.step not in done]
        result.skipped = [r.step for r in plan.refs if r.step in done]
        n_batches = -(-plan.probe.n_samples // batch_size) if plan.probe is not None else 0
        progress.start(len(todo), n_batches)
        try:
            for ref in todo:
                progress.step_started(ref)
                index = writer.index_of(ref.step)
                original = dict(plan.layout.duplicates).get(ref.step)
                try:
                    # FL values depend on the next checkpoint: a duplicate is computed in full
                    if (original is not None and plan.config.fl is None
                            and original in writer.done_steps()):
                        writer.copy_step(writer.index_of(original), index)
                        writer.finish_step(index, list(ref.files),
                                           json.loads(ref.extra.get("lfs_sha256", "[]")))
                    else:
                        _audit_step(plan, writer, ref, index, batch_size, device, trust_pickle,
                                    progress)
                except STEP_ERRORS as err:
                    writer.fail_step(index, str(err))
                    result.failed[ref.step] = str(err)
                    progress.step_finished(ref, str(err))
                    continue
                result.written.append(ref.step)
                progress.step_finished(ref, None)
                release = getattr(plan.source, "release", None)
                if callable(release):
                    release(ref)  # --cache drop: the step is written, its files can go
            writer.close()
        finally:
            writer.abandon()
        writer.group.attrs["checkpoints"] = json.dumps(writer.step_provenance())
        consolidate(plan.store)
    return result


def _feature_learning(
    plan: AuditPlan,
    writer: StepWriter,
    ref: CheckpointRef,
    index: int,
    state: dict,
    layers: dict,
    trust_pickle: bool,
) -> None:
    """FL quantities of the update from ``ref`` to the next selected checkpoint."""
    fl = plan.config.fl
    assert fl is not None
    following = plan.refs[plan.refs.index(ref) + 1]
    next_state = map_keys(plan.built, load_state_dict(
        plan.source.fetch(following), trust_pickle=trust_pickle, step=following.step))
    missing = [name for name in layers if f"{name}.weight" not in next_state]
    if missing:
        raise ModelBuildError(f"step {following.step}: no weight for layer(s) {missing}",
                              step=following.step)
    batch = fl.batch_at(ref.step, plan.probe.n_samples)
    labels = None if plan.probe.labels is None else plan.probe.labels[batch]
    results = fl_quantities(
        plan.built.module, layers, plan.probe.inputs[batch], plan.probe.targets[batch], labels,
        state, {name: next_state[f"{name}.weight"] for name in layers},
        loss=fl.loss, lr=fl.lr_at(ref.step),
    )
    for layer_index, info in enumerate(plan.layers):
        writer.write_fl(index, layer_index, results[info.name])


def _weights_only_step(
    plan: AuditPlan, writer: StepWriter, ref: CheckpointRef, index: int, paths: list,
    shas: list[str], trust_pickle: bool,
) -> None:
    state = load_state_dict(paths, trust_pickle=trust_pickle, step=ref.step)
    writer.begin_step()
    for layer_index, info in enumerate(plan.layers):
        tensor = state.get(f"{info.name}.weight")
        if tensor is None:
            raise WeightsError(f"step {ref.step} ({ref.label}): no tensor {info.name}.weight",
                               step=ref.step, layer=info.name)
        writer.write_gram(index, layer_index, gram_of_tensor(tensor, info.kind))
    writer.finish_step(index, [str(p) for p in paths], shas)


def _audit_step(
    plan: AuditPlan,
    writer: StepWriter,
    ref: CheckpointRef,
    index: int,
    batch_size: int,
    device: str,
    trust_pickle: bool,
    progress: Progress,
) -> None:
    paths = plan.source.fetch(ref)
    shas = [file_sha256(p) for p in paths]
    if plan.probe is None:
        _weights_only_step(plan, writer, ref, index, paths, shas, trust_pickle)
        return
    if plan.config.model == "hf":
        plan.built = load_hf_checkpoint(
            checkpoint_folder(plan.source, ref) or paths[0].parent, step=ref.step,
            trust_remote_code=plan.config.trust_remote_code,
        )
        state: dict = {}
    else:
        state = load_state_dict(paths, trust_pickle=trust_pickle, step=ref.step)
        state = load_weights(plan.built, state, step=ref.step)
    modules = dict(plan.built.module.named_modules())
    layers = {li.name: modules[li.name] for li in plan.layers if li.name in modules}
    writer.begin_step()
    dtype = np.dtype(plan.config.activation_dtype)
    keep = plan.layout.predictions
    predicted = np.full(plan.probe.n_samples, -1, dtype=np.int64) if keep else None
    try:
        for i, (start, stop, captured) in enumerate(replay(
            plan.built.module, layers, plan.probe, batch_size=batch_size,
            device=device, dtype=dtype, predictions=keep,
            hidden_states=plan.config.hidden_states,
        )):
            for layer_index, info in enumerate(plan.layers):
                writer.write_batch(index, layer_index, start, captured[info.name])
            if predicted is not None:
                predicted[start:stop] = captured[PREDICTION]
            progress.batch_done()
            fault_point("step-batch", step=ref.step, batch=i)
    except FlqAuditError:
        raise
    except Exception as err:
        raise CaptureError(
            f"step {ref.step} ({ref.label}): replaying the probe failed ({err})", step=ref.step
        ) from err
    for layer_index, info in enumerate(plan.layers):
        if info.name not in layers:
            continue  # a residual-stream capture: no weight, no Gram
        weight = state.get(f"{info.name}.weight")
        writer.write_gram(index, layer_index, gram(layers[info.name], weight))
    if predicted is not None:
        writer.write_predictions(index, predicted)
    if plan.layout.classifier is not None:
        module = layers[plan.layout.classifier]
        weight = state.get(f"{plan.layout.classifier}.weight")
        writer.write_classifier(index, weight_matrix(module, weight).detach().double().numpy())
    if plan.config.fl is not None and ref is not plan.refs[-1]:
        _feature_learning(plan, writer, ref, index, state, layers, trust_pickle)
    fault_point("step-commit", step=ref.step)
    writer.finish_step(index, [str(p) for p in paths], shas)
