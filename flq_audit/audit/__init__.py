"""The audit pipeline: a plan resolved up front, a runner, per-step extensions.

``plan.py`` resolves source, steps, model, probe, layers and extensions before any
checkpoint is read; ``loaders.py`` owns the per-step model; ``step.py`` fetches, loads,
replays, runs the extensions and commits one step, which ``runner.py`` (in this process) and
``distributed.py`` (on a dask cluster) call; ``extensions/`` holds one file per extension.
Importing this package is cheap; the names below load torch on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flq_audit.api import run_audit
    from flq_audit.audit.extensions.base import Extension, StepContext, StepExtension
    from flq_audit.audit.plan import AuditPlan, plan_audit
    from flq_audit.audit.runner import AuditResult, Progress

_LAZY = {
    "AuditPlan": "flq_audit.audit.plan", "plan_audit": "flq_audit.audit.plan",
    "AuditResult": "flq_audit.audit.runner", "Progress": "flq_audit.audit.runner",
    "run_audit": "flq_audit.api", "Extension": "flq_audit.audit.extensions.base",
    "StepContext": "flq_audit.audit.extensions.base",
    "StepExtension": "flq_audit.audit.extensions.base",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["AuditPlan", "AuditResult", "Extension", "Progress", "StepContext", "StepExtension",
           "plan_audit", "run_audit"]
