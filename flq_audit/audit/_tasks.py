"""What runs in a dask worker, and what a step's outcome is: one task audits one step.

:func:`audit_step` is the task (:mod:`flq_audit.audit.distributed` submits it, with the
shipped plan or the token of one a worker plugin installed); :func:`audit_one` is its body,
which a ``--workers`` audit's own process runs too (:mod:`flq_audit.audit._lanes`).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from flq_audit.audit.plan import AuditPlan
from flq_audit.audit.step import STEP_ERRORS, AuditResult, Progress, SilentProgress, run_step, set_threads
from flq_audit.options import RunOptions
from flq_audit.sources import CheckpointRef
from flq_audit.store import StepClaims

if TYPE_CHECKING:
    from dask.distributed import Future

    from flq_audit.store import StepWriter

#: The dask resource a task asks for when the audit runs on CUDA (one GPU per worker).
GPU_RESOURCE = "GPU"


@dataclass(frozen=True)
class StepOutcome:
    """What one step's task did: ``written``, ``failed`` (with ``message``) or ``skipped``."""

    step: int
    status: str
    worker: str
    message: str = ""


@dataclass
class DistributedAuditResult(AuditResult):
    """An audit's result, with the steps each worker wrote or failed."""

    workers: dict[str, dict[str, list[int]]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, object]:
        return super().to_dict() | {"workers": self.workers}

    def record(self, outcome: StepOutcome) -> None:
        tally = self.workers.setdefault(outcome.worker, {"written": [], "failed": []})
        if outcome.status == "written":
            self.written.append(outcome.step)
            tally["written"].append(outcome.step)
        elif outcome.status == "failed":
            self.failed[outcome.step] = outcome.message
            tally["failed"].append(outcome.step)
        else:
            self.skipped.append(outcome.step)


@dataclass(frozen=True)
class ShippedPlan:
    """What a worker needs to run steps: the plan without module weights, the options, and
    the torch threads of each worker process (``None``: the worker's own)."""

    plan: AuditPlan
    run: RunOptions
    token: str
    threads: int | None = None


def ship(plan: AuditPlan, run: RunOptions, threads: int | None = None) -> ShippedPlan:
    """The plan as it travels to workers (no model weights, no client-side listeners)."""
    report_downloads = getattr(plan.source, "report_downloads", None)
    if report_downloads is not None:  # the client's progress bar cannot travel
        report_downloads(None)
    return ShippedPlan(plan=replace(plan, loader=plan.loader.for_worker()), run=run,
                       token=uuid.uuid4().hex, threads=run.threads if threads is None else threads)


#: Plans rebuilt in this (worker) process, by token: the model is built once per worker.
_PLANS: dict[str, AuditPlan] = {}
#: Plans a worker plugin installed in this (worker) process, by token.
INSTALLED: dict[str, ShippedPlan] = {}


def worker_plan(shipped: ShippedPlan) -> AuditPlan:
    """The shipped plan with its loader rebuilt, once per worker process."""
    plan = _PLANS.get(shipped.token)
    if plan is None:
        plan = replace(shipped.plan, loader=shipped.plan.loader.rebuilt())
        _PLANS.clear()  # one audit at a time per worker process
        _PLANS[shipped.token] = plan
    return plan


def _claim(claims: StepClaims, step: int, done: list[int]) -> str | None:
    """Claim ``step`` for this worker; the reason it is skipped when another writer has it."""
    if claims.claim(step):
        return None
    held = claims.read(step)
    if held is not None and held.finished:
        if step in done:
            return "already done"
        if claims.reopen(step):  # a finished claim whose step is not done: write it again
            return None
    return "claimed by another writer"


def audit_step(shipped: ShippedPlan | str, step: int) -> StepOutcome:
    """Run one step in a worker: claim it, open the store, fetch, load, replay, extensions,
    commit; the claim is finished once ``done(step)`` is written, released on a failure.

    ``shipped`` is the plan, or the token of one a worker plugin installed in this process."""
    if isinstance(shipped, str):
        shipped = INSTALLED[shipped]
    set_threads(shipped.threads)  # --threads (or cores // workers) in each worker process
    return audit_one(worker_plan(shipped), shipped.run, step, worker_name())


def audit_one(plan: AuditPlan, run: RunOptions, step: int, worker: str) -> StepOutcome:
    """One step of ``plan`` in this process, as ``worker``: what :func:`audit_step` runs."""
    from flq_audit.capture import resolve_device
    from flq_audit.store import StepWriter

    ref = next(r for r in plan.refs if r.step == step)
    writer = StepWriter(plan.store, plan.layout)
    claims = StepClaims(plan.store)
    try:
        skipped = _claim(claims, step, writer.done_steps())
        if skipped is not None:
            return StepOutcome(step, "skipped", worker, skipped)
        if step in writer.done_steps():  # finished by an earlier try of this task
            claims.finish(step)
            return StepOutcome(step, "skipped", worker, "already done")
        try:
            run_step(plan, writer, ref, run, resolve_device(run.device), SilentProgress())
            writer.close()
        except STEP_ERRORS as err:
            claims.release(step)
            return StepOutcome(step, "failed", worker, str(err))
        except BaseException:
            claims.release(step)
            raise
        claims.finish(step)
    finally:
        claims.close()
        writer.abandon()
    plan.source.release(ref)  # --cache drop: the step is written, its files can go
    return StepOutcome(step, "written", worker)


def worker_name() -> str:
    try:
        from dask.distributed import get_worker

        return str(get_worker().name)
    except ValueError:  # called outside a worker (tests, debugging)
        return "local"


def report(progress: Progress, ref: CheckpointRef, outcome: StepOutcome) -> None:
    """Tell ``progress`` that ``ref``'s step finished on ``outcome.worker``."""
    progress.step_started(ref)
    progress.step_finished(ref, outcome.message if outcome.status == "failed" else None)
    on_worker = getattr(progress, "step_done_on", None)
    if on_worker is not None:
        on_worker(outcome.worker, ref, outcome.status)


def task_outcome(
    future: Future, step: int, refs: dict[int, CheckpointRef], writer: StepWriter
) -> StepOutcome:
    """The task's outcome; a task whose workers kept dying is recorded as a failed step."""
    from dask.distributed import KilledWorker

    try:
        return future.result()
    except KilledWorker as err:
        from flq_audit.store._schema import safe_text

        last = getattr(err.last_worker, "name", None) or getattr(err.last_worker, "address", "?")
        message = (f"step {step} ({refs[step].label}): {err.allowed_failures + 1} worker(s) "
                   f"died while running it, the last one {last}; rerun the audit to redo it "
                   "(dask retries a step up to distributed.scheduler.allowed-failures times)")
        writer.error[writer.index_of(step)] = safe_text(message)
        return StepOutcome(step, "failed", str(last), message)


__all__ = ["GPU_RESOURCE", "INSTALLED", "DistributedAuditResult", "ShippedPlan", "StepOutcome",
           "audit_one", "audit_step", "report", "ship", "task_outcome", "worker_name",
           "worker_plan"]
