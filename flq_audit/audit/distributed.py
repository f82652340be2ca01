"""Run an audit on a dask.distributed cluster: one task per step, written by the worker.

The client plans, creates the store template, hands out the steps not yet done, reports
progress and, at the end, writes the ``checkpoints`` provenance and consolidates. Each task
runs the sequential audit's own per-step code in a worker process: it opens the store,
fetches its checkpoint (Hub download or local file), loads it, replays the probe, runs the
extensions and commits the step (``done`` last).

Rules
-----
- **Local workers** (``--workers N``): N processes audit, this one and a LocalCluster of
  N - 1 workers (:mod:`flq_audit.audit._lanes`). This process audits steps from the start,
  while the workers start (import torch, rebuild the model); each worker is handed a step
  whenever it is free, so none waits on another and start-up costs no wall time. Each
  process runs ``cores // N`` torch threads (``--threads`` when given). ``--workers auto``
  picks N by :func:`flq_audit.scheduler.auto_workers`; where that is 1, the sequential audit
  runs instead.
- **The plan** is shipped once per worker with its loader's
  :meth:`~flq_audit.audit.loaders.ModelLoader.for_worker` copy (no module weights): a worker
  rebuilds what that left out once (:meth:`~flq_audit.audit.loaders.ModelLoader.rebuilt`:
  a JSON spec or a factory is read where the worker runs; transformers checkpoints are
  loaded per step anyway). Download listeners of the client are detached first. On an
  existing cluster (``--scheduler``) it is scattered (``broadcast=True``); a local worker
  gets it from a worker plugin as it starts (also a worker its nanny restarts).
- **FL residual**: the task of step *k* fetches step *k+1* itself (the sequential audit
  hands it the prefetched one); nothing waits on another task.
- **Duplicate steps** (byte-identical checkpoint files) are handed out only once their
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
import importlib.util
import uuid
from collections.abc import Iterator
from dataclasses import replace
from typing import TYPE_CHECKING

from flq_audit import __version__
from flq_audit.audit import _tasks
from flq_audit.audit._tasks import (
    DistributedAuditResult,
    ShippedPlan,
    StepOutcome,
    audit_step,
    ship,
    worker_plan,
)
from flq_audit.audit.plan import AuditPlan
from flq_audit.audit.step import AuditResult, Progress, SilentProgress, after_audit, reopen_moved
from flq_audit.errors import OptionError
from flq_audit.options import RunOptions
from flq_audit.scheduler import auto_workers, scheduler_client, usable_cores
from flq_audit.sources import CheckpointRef
from flq_audit.store import StepClaims, create_or_resume

if TYPE_CHECKING:
    from dask.distributed import Client, Future

    from flq_audit.store import StepWriter


def run_distributed(
    plan: AuditPlan, run: RunOptions, progress: Progress | None = None,
    *, version: str = __version__,
) -> AuditResult:
    """Audit every selected step not yet done as dask tasks; consolidate at the end, then
    run each extension's ``after_audit``. ``--workers auto`` that picks one process runs the
    sequential audit (:func:`flq_audit.audit.runner.run_audit`) and returns its result."""
    progress = progress or SilentProgress()
    result = DistributedAuditResult(store=plan.store)
    if not _audit_on_cluster(plan, run, progress, result, version):
        from flq_audit.audit.runner import run_audit  # the template exists: no overwrite

        return run_audit(plan, replace(run, workers=None, overwrite=False), progress,
                         version=version)
    after_audit(plan)
    return result


def _audit_on_cluster(plan: AuditPlan, run: RunOptions, progress: Progress,
                      result: DistributedAuditResult, version: str) -> bool:
    """The steps not yet done, audited on the cluster into ``result``; False (nothing
    audited) where ``--workers auto`` picks one process."""
    claims = StepClaims(plan.store)  # the template's claim, on object stores
    try:
        with connect(run) as client:  # an unreachable cluster: no store
            writer = create_or_resume(plan.store, plan.layout, overwrite=run.overwrite,
                                      version=version, claims=claims)
            reopen_moved(plan, run, writer)
            try:
                done = set(writer.done_steps())
                todo = [r for r in plan.refs if r.step not in done]
                processes = _processes(run, len(todo))
                if processes == 1:
                    return False
                result.skipped = [r.step for r in plan.refs if r.step in done]
                progress.start(len(todo), 0)
                if client is None:
                    from flq_audit.audit._lanes import run_lanes

                    run_lanes(plan, run, processes, todo, writer, progress, result)
                else:
                    _run_tasks(client, plan, run, todo, writer, progress, result)
                result.written.sort()  # in step order, as a sequential audit lists them
                result.skipped.sort()
                writer.close()
            finally:
                writer.abandon()
            writer.finish()
    finally:
        claims.close()
    return True


def _processes(run: RunOptions, steps: int) -> int:
    """How many processes audit locally (this one included); 0 on an existing cluster."""
    if run.scheduler is not None:
        return 0
    if run.workers == "auto":
        from flq_audit.capture import resolve_device

        return auto_workers(usable_cores(), steps, resolve_device(run.device))
    return int(run.workers or 1)


def _run_tasks(
    client: Client, plan: AuditPlan, run: RunOptions, todo: list[CheckpointRef],
    writer: StepWriter, progress: Progress, result: DistributedAuditResult,
) -> None:
    from dask.distributed import as_completed

    shipped = client.scatter(ship(plan, run), broadcast=True, hash=False)
    resources = {_tasks.GPU_RESOURCE: 1} if run.device.startswith("cuda") else None
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
            outcome = _tasks.task_outcome(future, submitted[future.key], refs, writer)
            result.record(outcome)
            _tasks.report(progress, refs[outcome.step], outcome)
            for later in waiting.pop(outcome.step, []):
                futures.add(submit(later))
    except BaseException:
        futures.clear()
        client.cancel(running)
        raise


@contextlib.contextmanager
def connect(run: RunOptions) -> Iterator[Client | None]:
    """A client of the cluster at ``run.scheduler``; ``None`` for local workers, whose
    cluster :func:`~flq_audit.audit._lanes.run_lanes` starts while this process audits."""
    if importlib.util.find_spec("distributed") is None:  # checked before any store is made
        raise OptionError("--workers and --scheduler need dask.distributed: "
                          "pip install 'flq-audit[distributed]'")
    if run.scheduler is None:
        yield None
        return
    client = scheduler_client(run.scheduler)
    with client:
        yield client


#: The task side lives in :mod:`flq_audit.audit._tasks`; importing it from here still works.
__all__ = ["DistributedAuditResult", "ShippedPlan", "StepOutcome", "audit_step", "connect",
           "run_distributed", "ship", "worker_plan"]
