"""Exception and warning hierarchy of flq-audit, grouped by pipeline stage.

Every error carries its context as attributes (``path``, ``step``, ``layer``, ``hint``) so
that the CLI and ``--json`` output can read them without parsing the message.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


class FlqAuditError(Exception):
    """Root of every error raised by flq-audit."""

    def __init__(
        self,
        message: str,
        *,
        path: str | Path | None = None,
        step: int | None = None,
        layer: str | None = None,
        hint: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.path = str(path) if path is not None else None
        self.step = step
        self.layer = layer
        self.hint = hint

    def __str__(self) -> str:
        return self.message if self.hint is None else f"{self.message}\n{self.hint}"

    def to_dict(self) -> dict[str, Any]:
        """Machine-readable form used by ``--json``."""
        return {
            "type": type(self).__name__,
            "message": self.message,
            "path": self.path,
            "step": self.step,
            "layer": self.layer,
            "hint": self.hint,
        }


class OptionError(FlqAuditError, ValueError):
    """An option value is malformed or out of range (a usage error)."""


# ---------------------------------------------------------------- SOURCES
class SourceError(FlqAuditError):
    """A checkpoint source cannot be listed or resolved."""


class CheckpointNotFoundError(SourceError, FileNotFoundError):
    """A path, folder or checkpoint that was asked for does not exist."""


class StepSelectionError(SourceError, ValueError):
    """A ``--steps`` expression is malformed, or step names clash."""


class StepSyntaxError(StepSelectionError, OptionError):
    """A ``--steps`` expression does not follow the grammar."""


class IntegrityError(SourceError):
    """A checkpoint's files do not match what its index or hash promised."""


# ---------------------------------------------------------------- WEIGHTS
class WeightsError(FlqAuditError):
    """A checkpoint file cannot be read as a state dict."""


class UnsafeCheckpointError(WeightsError):
    """A pickle needs full unpickling, which is refused without ``trust_pickle``."""


# ---------------------------------------------------------------- MODELS
class ModelBuildError(FlqAuditError):
    """A model cannot be built, or a state dict does not fit it."""


class ModelNotFoundError(ModelBuildError, FileNotFoundError):
    """A model spec or factory file does not exist."""


# ---------------------------------------------------------------- PROBES
class ProbeError(FlqAuditError, ValueError):
    """A probe dataset is missing, malformed, or does not fit the model."""


class ProbeNotFoundError(ProbeError, FileNotFoundError):
    """A probe file does not exist."""


# ---------------------------------------------------------------- CAPTURE
class CaptureError(FlqAuditError):
    """Replaying the probe through a checkpoint failed."""


class LayerNotFoundError(CaptureError, LookupError):
    """A requested layer does not exist in the model."""


# ---------------------------------------------------------------- STORE
class StoreError(FlqAuditError):
    """The Zarr store cannot be created, opened or written."""


class StoreNotFoundError(StoreError, FileNotFoundError):
    """The store path does not exist."""


class StoreMismatchError(StoreError):
    """An existing store was made from another source, probe, layer set or config."""


class StoreLockedError(StoreError):
    """Another live process is writing to the store."""


# ---------------------------------------------------------------- METRICS / EXPORT
class MetricError(FlqAuditError, ValueError):
    """A metric cannot be computed from what the store holds."""


class ExportError(FlqAuditError):
    """Exporting a store to NetCDF, CSV or figures failed."""


# ---------------------------------------------------------------- WARNINGS
class FlqAuditWarning(UserWarning):
    """Something worth knowing that does not stop the audit."""


__all__ = [
    "CaptureError",
    "CheckpointNotFoundError",
    "ExportError",
    "FlqAuditError",
    "FlqAuditWarning",
    "IntegrityError",
    "LayerNotFoundError",
    "MetricError",
    "ModelBuildError",
    "ModelNotFoundError",
    "OptionError",
    "ProbeError",
    "ProbeNotFoundError",
    "SourceError",
    "StepSelectionError",
    "StepSyntaxError",
    "StoreError",
    "StoreLockedError",
    "StoreMismatchError",
    "StoreNotFoundError",
    "UnsafeCheckpointError",
    "WeightsError",
]
