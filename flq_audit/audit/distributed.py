"""Run an audit on a dask.distributed cluster: one task per step, written by the worker.

The client plans, creates the store template, submits one task per selected step that is
not yet done, reports progress and, at the end, writes the ``checkpoints`` provenance and
consolidates. Each task runs the sequential audit's own per-step code in a worker process:
it opens the store, fetches its checkpoint (Hub download or local file), loads it, replays
the probe, runs the extensions and commits the step (``done`` last).

Rules
-----
- **The plan** is shipped once per worker (``client.scatter(..., broadcast=True)``) with its
  loader's :meth:`~flq_audit.audit.loaders.ModelLoader.for_worker` copy (no module weights):
  a worker rebuilds what that left out once (:meth:`~flq_audit.audit.loaders.ModelLoader.rebuilt`:
  a JSON spec or a factory is read where the worker runs; transformers checkpoints are
  loaded per step anyway). Download listeners of the client are detached first.
- **FL residual**: the task of step *k* fetches step *k+1* itself (the sequential audit
  hands it the prefetched one); nothing waits on another task.
- **Duplicate steps** (byte-identical checkpoint files) are submitted only once their
  original's task has finished: the task then copies the original's data. If the original
  failed, the duplicate is audited from its own files.
- **Claims**: each task claims its step in the store (``StepClaims``) before writing it and
  finishes the claim after ``done``; a step another audit holds is skipped, a claim left by a
  dead worker is taken over by the retry. Several audits may therefore share one store.
- **A worker that dies** mid-step leaves that step not ``done``; dask reruns the task on
  another worker (up to ``distributed.scheduler.allowed-failures`` times), which rewrites the
  step whole. Past that limit the step is recorded in ``error(step)`` and a rerun redoes it.
- **GPUs**: with ``--device cuda`` every task asks for ``resources={"GPU": 1}``; start each
  worker with ``--resources GPU=1`` (a local cluster gets it from ``--workers``).
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from flq_audit import __version__
from flq_audit.audit.plan import AuditPlan
from flq_audit.audit.step import (
    STEP_ERRORS,
    AuditResult,
    Progress,
    SilentProgress,
    after_audit,
    reopen_moved,
    run_step,
    set_threads,
)
from flq_audit.errors import OptionError
from flq_audit.options import RunOptions
from flq_audit.scheduler import scheduler_client
from flq_audit.sources import CheckpointRef
from flq_audit.store import StepClaims, create_or_resume

if TYPE_CHECKING:
    from dask.distributed import Client, Future

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
    """What a worker needs to run steps: the plan without module weights, and the options."""

    plan: AuditPlan
    run: RunOptions
    token: str


def ship(plan: AuditPlan, run: RunOptions) -> ShippedPlan:
    """The plan as it travels to workers (no model weights, no client-side listeners)."""
    report_downloads = getattr(plan.source, "report_downloads", None)
    if report_downloads is not None:  # the client's progress bar cannot travel
        report_downloads(None)
    return ShippedPlan(plan=replace(plan, loader=plan.loader.for_worker()), run=run,
                       token=uuid.uuid4().hex)


#: Plans rebuilt in this (worker) process, by token: the model is built once per worker.
_PLANS: dict[str, AuditPlan] = {}


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


def audit_step(shipped: ShippedPlan, step: int) -> StepOutcome:
    """Run one step in a worker: claim it, open the store, fetch, load, replay, extensions,
    commit; the claim is finished once ``done(step)`` is written, released on a failure."""
    from flq_audit.capture import resolve_device
    from flq_audit.store import StepWriter

    worker = _worker_name()
    set_threads(shipped.run.threads)  # --threads applies to each worker process
    plan = worker_plan(shipped)
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
            run_step(plan, writer, ref, shipped.run, resolve_device(shipped.run.device),
                     SilentProgress())
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


def _worker_name() -> str:
    try:
        from dask.distributed import get_worker

        return str(get_worker().name)
    except ValueError:  # called outside a worker (tests, debugging)
        return "local"


def run_distributed(
    plan: AuditPlan, run: RunOptions, progress: Progress | None = None,
    *, version: str = __version__,
) -> DistributedAuditResult:
    """Audit every selected step not yet done as dask tasks; consolidate at the end, then
    run each extension's ``after_audit``."""
    progress = progress or SilentProgress()
    result = DistributedAuditResult(store=plan.store)
    claims = StepClaims(plan.store)  # the template's claim, on object stores
    try:
        with connect(run) as client:  # an unreachable cluster: no store
            writer = create_or_resume(plan.store, plan.layout, overwrite=run.overwrite,
                                      version=version, claims=claims)
            reopen_moved(plan, run, writer)
            try:
                done = set(writer.done_steps())
                todo = [r for r in plan.refs if r.step not in done]
                result.skipped = [r.step for r in plan.refs if r.step in done]
                progress.start(len(todo), 0)
                _run_tasks(client, plan, run, todo, writer, progress, result)
                result.written.sort()  # in step order, as a sequential audit lists them
                result.skipped.sort()
                writer.close()
            finally:
                writer.abandon()
            writer.finish()
    finally:
        claims.close()
    after_audit(plan)
    return result


def _run_tasks(
    client: Client, plan: AuditPlan, run: RunOptions, todo: list[CheckpointRef],
    writer: StepWriter, progress: Progress, result: DistributedAuditResult,
) -> None:
    from dask.distributed import as_completed

    shipped = client.scatter(ship(plan, run), broadcast=True, hash=False)
    resources = {GPU_RESOURCE: 1} if run.device.startswith("cuda") else None
    duplicates = dict(plan.layout.duplicates)
    waiting: dict[int, list[CheckpointRef]] = {}
    steps = {r.step for r in todo}

    submitted: dict[str, int] = {}
    running: list[Future] = []

    def submit(ref: CheckpointRef) -> Future:
        key = f"flq-audit-step-{ref.step}-{uuid.uuid4().hex[:8]}"
        submitted[key] = ref.step
        running.append(client.submit(audit_step, shipped, ref.step, key=key,
                                     resources=resources, pure=False))
        return running[-1]

    first = []
    for ref in todo:
        original = duplicates.get(ref.step)
        if original in steps:  # after its original: then it is a copy
            waiting.setdefault(original, []).append(ref)
        else:
            first.append(submit(ref))
    refs = {r.step: r for r in todo}
    futures = as_completed(first)
    try:
        for future in futures:
            outcome = _outcome(future, submitted[future.key], refs, writer)
            result.record(outcome)
            ref = refs[outcome.step]
            progress.step_started(ref)
            progress.step_finished(ref, outcome.message if outcome.status == "failed" else None)
            on_worker = getattr(progress, "step_done_on", None)
            if on_worker is not None:
                on_worker(outcome.worker, ref, outcome.status)
            for later in waiting.pop(outcome.step, []):
                futures.add(submit(later))
    except BaseException:
        futures.clear()
        client.cancel(running)
        raise


def _outcome(
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


@contextlib.contextmanager
def connect(run: RunOptions) -> Iterator[Client]:
    """A client of the cluster at ``run.scheduler``, or of a new LocalCluster of
    ``run.workers`` single-threaded worker processes (closed on exit)."""
    try:
        from dask.distributed import Client, LocalCluster
    except ImportError as err:
        raise OptionError("--workers and --scheduler need dask.distributed: "
                          "pip install 'flq-audit[distributed]'") from err
    if run.scheduler is not None:
        client = scheduler_client(run.scheduler)
        with client:
            yield client
        return
    resources = {GPU_RESOURCE: 1} if run.device.startswith("cuda") else None
    with LocalCluster(n_workers=run.workers, threads_per_worker=1, processes=True,
                      dashboard_address=None, resources=resources) as cluster, \
            Client(cluster) as client:
        yield client


__all__ = ["DistributedAuditResult", "ShippedPlan", "StepOutcome", "audit_step", "connect",
           "run_distributed", "ship", "worker_plan"]
