"""The worker plugin of local workers: each worker process gets the plan as it starts."""

from __future__ import annotations

import asyncio
import pickle

from distributed.diagnostics.plugin import WorkerPlugin

from flq_audit.audit._tasks import INSTALLED, ShippedPlan, worker_plan
from flq_audit.audit.step import set_threads


def install(shipped: ShippedPlan) -> None:
    """Make ``shipped`` this worker process's plan: threads set, torch imported and the
    model rebuilt now, so that the first step pays none of it."""
    INSTALLED[shipped.token] = shipped
    set_threads(shipped.threads)
    try:
        worker_plan(shipped)
        from flq_audit.audit.loaders import TransformersLoader
        from flq_audit.store import StepWriter  # noqa: F401  (imported before the first step)

        if isinstance(shipped.plan.loader, TransformersLoader):
            import transformers  # noqa: F401
    except Exception:  # the step that needs it raises it, with its step
        pass


class PlanInstaller(WorkerPlugin):
    """Installs the shipped plan in each worker process as it starts (a worker its nanny
    restarts too); tasks then carry only its token."""

    def __init__(self, shipped: ShippedPlan) -> None:
        import cloudpickle

        self.token = shipped.token
        # by cloudpickle, as a task's arguments travel (classes of __main__ by value)
        self.payload = cloudpickle.dumps(shipped)

    async def setup(self, worker: object) -> None:
        shipped = pickle.loads(self.payload)
        await asyncio.get_running_loop().run_in_executor(None, install, shipped)

    def teardown(self, worker: object) -> None:
        INSTALLED.pop(self.token, None)


__all__ = ["PlanInstaller", "install"]
