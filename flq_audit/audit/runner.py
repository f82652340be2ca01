"""Run an audit plan in this process: claim each step, then :func:`~flq_audit.audit.step.run_step`.

The plan is never changed; what one step does (fetch, load, replay, extensions, commit) is
in :mod:`flq_audit.audit.step`, the same code a dask worker runs
(:mod:`flq_audit.audit.distributed`). :func:`flq_audit.api.run_audit` chooses between the two.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from flq_audit import __version__
from flq_audit.audit.plan import AuditPlan
from flq_audit.audit.prefetch import Fetched, Prefetcher
from flq_audit.audit.step import (
    STEP_ERRORS,
    AuditResult,
    Progress,
    SilentProgress,
    after_audit,
    fetch_and_load,
    prefetched,
    reopen_moved,
    run_step,
    set_threads,
)
from flq_audit.capture import resolve_device
from flq_audit.errors import OptionError
from flq_audit.options import DEFAULT_RUN, RunOptions
from flq_audit.sources import CheckpointRef
from flq_audit.store import StepClaims, StepWriter, create_or_resume


def run_audit(
    plan: AuditPlan, run: RunOptions = DEFAULT_RUN, progress: Progress | None = None,
    *, version: str = __version__,
) -> AuditResult:
    """Write every selected step that is not yet done, one after the other, in this process;
    a rerun resumes where this one stopped.

    Each extension's ``after_audit`` runs at the end (the FL residual warns there when the
    checkpoints were not plain SGD steps). ``--workers`` and ``--scheduler`` audits run on a
    cluster: :func:`flq_audit.api.run_audit` sends them there.
    """
    if run.workers is not None or run.scheduler is not None:
        raise OptionError("--workers and --scheduler audits run on a dask cluster: call "
                          "flq_audit.api.run_audit (or flq_audit.audit.distributed."
                          "run_distributed), not flq_audit.audit.runner.run_audit")
    result = _run_here(plan, run, progress, version=version)
    after_audit(plan)
    return result


def _run_here(
    plan: AuditPlan, run: RunOptions, progress: Progress | None, *, version: str,
) -> AuditResult:
    """The audit in this process, one step after the other."""
    progress = progress or SilentProgress()
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
        prefetcher = (Prefetcher(todo, lambda ref: prefetched(plan, ref, run, done))
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
        run_step(plan, writer, ref, run, device, progress, fetched, peek)
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


#: ``STEP_ERRORS``, ``AuditResult``, ``Progress``, ``fetch_and_load``, ``reopen_moved`` and
#: ``set_threads`` live in :mod:`flq_audit.audit.step`; importing them from here still works.
__all__ = ["STEP_ERRORS", "AuditResult", "Progress", "fetch_and_load", "reopen_moved",
           "run_audit", "set_threads"]
