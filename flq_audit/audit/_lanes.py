"""Local workers (``--workers N``): this process and a LocalCluster of N - 1 workers audit
the steps together, each taking the next step whenever it is free.

Starting a worker costs seconds (a process, then torch and the model). This process does
not wait for it: it audits steps from the start, while a thread starts the cluster and
installs the plan in each worker (:class:`PlanInstaller`). Once the workers are ready, each
is handed one step at a time, so a step is audited by whichever process is free first and a
short audit ends before the workers would have paid off. Every process runs ``cores // N``
torch threads (``--threads`` when given), so together they never oversubscribe the cores.
"""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import subprocess
import sys
import threading
import uuid
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

from flq_audit.audit._tasks import (
    GPU_RESOURCE,
    DistributedAuditResult,
    ShippedPlan,
    StepOutcome,
    audit_one,
    audit_step,
    report,
    ship,
    task_outcome,
    worker_name,
)
from flq_audit.audit.plan import AuditPlan
from flq_audit.audit.step import Progress, set_threads
from flq_audit.options import RunOptions
from flq_audit.scheduler import threads_per_worker, usable_cores
from flq_audit.sources import CheckpointRef

if TYPE_CHECKING:
    from distributed import Client, Future, LocalCluster

    from flq_audit.store import StepWriter

#: The name this process's own steps are recorded under (``--json``'s ``workers``).
CLIENT = "client"
#: Seconds a worker outlives this process when it is killed (SIGKILL: nothing stops them).
ORPHAN_TIMEOUT_S = 60
#: How often a wait for the workers looks up (so that Ctrl-C is not held up).
_POLL_S = 0.5


class StepQueue:
    """The steps left, handed out in order to whichever process asks first; a duplicate
    step is handed out once its original's outcome is known (it is then a copy)."""

    def __init__(self, todo: list[CheckpointRef], duplicates: dict[int, int]) -> None:
        steps = {r.step for r in todo}
        self._ready: deque[CheckpointRef] = deque()
        self._waiting: dict[int, list[CheckpointRef]] = {}
        for ref in todo:
            original = duplicates.get(ref.step)
            if original in steps:
                self._waiting.setdefault(original, []).append(ref)
            else:
                self._ready.append(ref)
        self._lock = threading.Lock()
        self._closed = False

    def take(self) -> CheckpointRef | None:
        """The next step to audit, or None when none is ready (or the queue is closed)."""
        with self._lock:
            return None if self._closed or not self._ready else self._ready.popleft()

    def settle(self, step: int) -> None:
        """``step``'s outcome is known: its duplicates may go."""
        with self._lock:
            self._ready.extend(self._waiting.pop(step, []))

    def close(self) -> None:
        """Hand out nothing more."""
        with self._lock:
            self._closed = True


class WorkerPool:
    """The other N - 1 processes: a scheduler and ``dask worker`` processes started on a
    thread; each worker, once ready, is handed a step whenever it is free. Finished tasks go
    to ``events``. The workers are processes of their own (not a LocalCluster's), so that
    they can be stopped at once, also while they start."""

    def __init__(self, n: int, run: RunOptions, shipped: ShippedPlan, steps: StepQueue,
                 events: queue.Queue[Future | BaseException]) -> None:
        self.n, self.shipped, self.steps, self.events = n, shipped, steps, events
        self.resources = {GPU_RESOURCE: 1} if run.device.startswith("cuda") else None
        self.running: dict[object, int] = {}  # task key -> step
        self._futures: list[Future] = []
        self._idle = 0
        self._seen: set[str] = set()  # the workers that took a probe
        self._lock = threading.RLock()  # a done callback may hand out the next step
        self._stop = threading.Event()
        self._cluster: LocalCluster | None = None  # the scheduler
        self._client: Client | None = None
        self._processes: list[subprocess.Popen[bytes]] = []
        self._thread = threading.Thread(target=self._start, name="flq-audit-workers",
                                        daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _start(self) -> None:
        try:  # distributed is imported here: this process audits meanwhile
            from distributed import Client, LocalCluster

            from flq_audit.audit._plugin import PlanInstaller

            self._cluster = LocalCluster(n_workers=0, processes=True, dashboard_address=None)
            with self._lock:
                if self._stop.is_set():
                    return
                self._client = Client(self._cluster)
            self._client.register_plugin(PlanInstaller(self.shipped),
                                         name=f"flq-audit-plan-{self.shipped.token}")
            address = self._cluster.scheduler_address
            with self._lock:  # each worker gets the plan as it starts
                if self._stop.is_set():
                    return
                self._processes = [subprocess.Popen(
                    worker_command(address, str(i), self.resources), env=_worker_env(),
                    start_new_session=True) for i in range(self.n)]
            for _ in range(self.n):
                self._probe()
        except BaseException as err:  # the audit raises it
            if not self._stop.is_set():
                self.events.put(err)

    def _probe(self) -> None:
        """A no-op task: it runs once a worker has the plan (plugins are set up before a
        worker takes tasks); each worker it finds on is one more to hand steps to."""
        with self._lock:
            if self._client is None or self._stop.is_set():
                return
            future = self._client.submit(worker_name, key=f"flq-audit-ready-{uuid.uuid4().hex}",
                                         resources=self.resources, pure=False)
            self._futures.append(future)
        future.add_done_callback(self._ready)

    def _ready(self, future: Future) -> None:
        if future.status != "finished":
            return
        with self._lock:
            name = future.result()
            if name in self._seen:  # a worker that was ready already ran it: look again
                self._probe()
                return
            self._seen.add(name)
            self._idle += 1
        self.fill()

    def fill(self) -> None:
        """Hand a step to each idle worker, while steps are ready."""
        with self._lock:
            while self._idle and self._client is not None and not self._stop.is_set():
                ref = self.steps.take()
                if ref is None:
                    return
                self._idle -= 1
                key = f"flq-audit-step-{ref.step}-{uuid.uuid4().hex[:8]}"
                self.running[key] = ref.step
                future = self._client.submit(audit_step, self.shipped.token, ref.step, key=key,
                                             resources=self.resources, pure=False)
                self._futures.append(future)
                future.add_done_callback(self._done)

    def _done(self, future: Future) -> None:
        self.events.put(future)
        with self._lock:
            self._idle += 1
        self.fill()

    def close(self) -> None:
        """Stop handing out steps, cancel what runs, stop the workers (at once: those still
        starting too) and the scheduler."""
        self._stop.set()
        with self._lock:
            client, futures, processes = self._client, list(self._futures), self._processes
        if client is not None:
            client.cancel(futures)
        for process in processes:  # the worker and its nanny: its own process group
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        self._thread.join()
        if client is not None:
            client.close()
        if self._cluster is not None:
            self._cluster.close()


def worker_command(address: str, name: str, resources: dict[str, int] | None) -> list[str]:
    """A ``dask worker`` process of one single-threaded worker (under its nanny, which
    restarts it when it dies) for the scheduler at ``address``; it closes itself when the
    scheduler (this process) is gone for :data:`ORPHAN_TIMEOUT_S`."""
    command = [sys.executable, "-m", "distributed.cli.dask_worker", address, "--name", name,
               "--nworkers", "1", "--nthreads", "1", "--no-dashboard",
               "--death-timeout", str(ORPHAN_TIMEOUT_S)]
    for key, value in (resources or {}).items():
        command += ["--resources", f"{key}={value}"]
    return command


def _worker_env() -> dict[str, str]:
    """This process's environment, dask's log at warnings only (as a LocalCluster's)."""
    return {**os.environ, "DASK_LOGGING__DISTRIBUTED": "warning"}


def run_lanes(plan: AuditPlan, run: RunOptions, processes: int, todo: list[CheckpointRef],
              writer: StepWriter, progress: Progress, result: DistributedAuditResult) -> None:
    """Audit ``todo`` in this process and ``processes - 1`` local workers into ``result``."""
    import torch

    threads = threads_per_worker(usable_cores(), processes, run.threads)
    shipped = ship(plan, run, threads)
    steps = StepQueue(todo, dict(plan.layout.duplicates))
    events: queue.Queue[Future | BaseException] = queue.Queue()
    pool = WorkerPool(processes - 1, run, shipped, steps, events)
    refs = {r.step: r for r in todo}

    def settle(outcome: StepOutcome) -> None:
        result.record(outcome)
        report(progress, refs[outcome.step], outcome)
        steps.settle(outcome.step)
        pool.fill()

    before = torch.get_num_threads()
    set_threads(threads)
    pool.start()
    try:
        for _ in todo:
            settle(_next_outcome(plan, run, steps, events, lambda f: task_outcome(
                f, pool.running[f.key], refs, writer)))
    finally:
        steps.close()
        pool.close()
        torch.set_num_threads(before)


def _next_outcome(plan: AuditPlan, run: RunOptions, steps: StepQueue,
                  events: queue.Queue[Future | BaseException],
                  outcome_of: Callable[[Future], StepOutcome]) -> StepOutcome:
    """The next step's outcome: a worker's finished task, else a step audited here, else
    (no step is ready for this process) the next task a worker finishes."""
    while True:
        try:
            event = events.get(block=False)
        except queue.Empty:
            ref = steps.take()
            if ref is not None:
                return audit_one(plan, run, ref.step, CLIENT)
            try:
                event = events.get(timeout=_POLL_S)
            except queue.Empty:
                continue
        if isinstance(event, BaseException):
            raise event
        return outcome_of(event)


__all__ = ["CLIENT", "StepQueue", "WorkerPool", "run_lanes"]
