"""Auditing from inside training: checkpoints audited into one store as they are saved.

- :class:`Recorder` (a plain loop): ``recorder.save(step, model)`` writes the step's
  safetensors file and hands the step to the audit worker.
- :class:`FlqAuditCallback` (a ``transformers.Trainer`` callback, extra ``flq-audit[hf]``):
  audits each ``checkpoint-N`` folder the Trainer saves.
- :class:`FlqAuditLightningCallback` (a PyTorch Lightning callback, extra
  ``flq-audit[lightning]``): saves the module's weights every N steps or epochs and audits them.

By default one background process audits the steps in order, so training waits only for the
hand-over; ``inline=True`` audits in the training process (for debugging). The store equals
what ``flq-audit FOLDER --steps all --out OTHER`` writes afterwards with the same options.
Importing this package loads neither torch nor a trainer: each name loads on first use.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from flq_audit.integrations._settings import AuditSettings
    from flq_audit.integrations._worker import AuditWorker
    from flq_audit.integrations.hf import FlqAuditCallback
    from flq_audit.integrations.lightning import FlqAuditLightningCallback
    from flq_audit.integrations.recorder import Recorder

_WHERE = {
    "AuditSettings": "flq_audit.integrations._settings",
    "AuditWorker": "flq_audit.integrations._worker",
    "Recorder": "flq_audit.integrations.recorder",
    "FlqAuditCallback": "flq_audit.integrations.hf",
    "FlqAuditLightningCallback": "flq_audit.integrations.lightning",
}


def __getattr__(name: str) -> object:
    """Each public name loads its module (and its trainer package) on first use."""
    if name in _WHERE:
        return getattr(import_module(_WHERE[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["AuditSettings", "AuditWorker", "FlqAuditCallback", "FlqAuditLightningCallback",
           "Recorder"]
