"""Exception and warning hierarchy of flq-audit, grouped by pipeline stage.

Every error carries its context as attributes (``path``, ``step``, ``layer``, ``hint``) so
that the CLI and ``--json`` output can read them without parsing the message, and its exit
code as the class attribute ``exit_code`` (the table is in :mod:`flq_audit.cli._errors`).
"""

from __future__ import annotations

import errno
from pathlib import Path
from typing import Any

EXIT_USAGE = 2
EXIT_INPUT_MISSING = 3
EXIT_DATA_ERROR = 4
EXIT_SYSTEM = 6
EXIT_NETWORK = 7


class FlqAuditError(Exception):
    """Root of every error raised by flq-audit."""

    exit_code: int = EXIT_DATA_ERROR

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

    exit_code = EXIT_USAGE


# ---------------------------------------------------------------- SOURCES
class SourceError(FlqAuditError):
    """A checkpoint source cannot be listed or resolved."""


class CheckpointNotFoundError(SourceError, FileNotFoundError):
    """A path, folder or checkpoint that was asked for does not exist."""

    exit_code = EXIT_INPUT_MISSING


class StepSelectionError(SourceError, ValueError):
    """A ``--steps`` expression is malformed, or step names clash."""

    exit_code = EXIT_DATA_ERROR


class StepSyntaxError(StepSelectionError, OptionError):
    """A ``--steps`` expression does not follow the grammar."""

    exit_code = EXIT_USAGE


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

    exit_code = EXIT_INPUT_MISSING


# ---------------------------------------------------------------- PROBES
class ProbeError(FlqAuditError, ValueError):
    """A probe dataset is missing, malformed, or does not fit the model."""


class ProbeShapeError(ProbeError):
    """The probe's inputs do not fit the model's first layer."""


class ProbeNotFoundError(ProbeError, FileNotFoundError):
    """A probe file does not exist."""

    exit_code = EXIT_INPUT_MISSING


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

    exit_code = EXIT_INPUT_MISSING


class StoreMismatchError(StoreError):
    """An existing store was made from another source, probe, layer set or config."""


class StoreLockedError(StoreError):
    """Another live process is writing to the store."""


class UnsafeDeletionError(OptionError):
    """A destructive option names a path that flq-audit did not make (refused, nothing deleted)."""


# ---------------------------------------------------------------- SYSTEM
class SystemResourceError(FlqAuditError):
    """The operating system refused: disk full, permission denied, read-only, too many files."""

    exit_code = EXIT_SYSTEM


class NetworkError(SourceError):
    """A download or Hub request failed on the network."""

    exit_code = EXIT_NETWORK


_OS_REASONS = {
    errno.ENOSPC: "disk full (ENOSPC)",
    errno.EDQUOT: "disk quota exceeded (EDQUOT)",
    errno.EACCES: "permission denied (EACCES)",
    errno.EPERM: "operation not permitted (EPERM)",
    errno.EROFS: "read-only file system (EROFS)",
    errno.EMFILE: "too many open files (EMFILE)",
    errno.ENFILE: "too many open files in the system (ENFILE)",
    errno.ENOMEM: "out of memory (ENOMEM)",
    errno.EIO: "input/output error (EIO)",
}
_RESUME = "finished steps are kept: fix the cause and rerun the same command to resume"


#: Packages whose every exception is a failure on the network.
_HTTP_CLIENTS = ("httpx", "httpcore", "requests", "urllib3")
#: Packages of object-store clients: their connection and HTTP-client errors are network ones.
_OBJECT_STORE_CLIENTS = ("botocore", "aiobotocore", "aiohttp", "s3fs", "gcsfs", "adlfs")
_NETWORK_BASES = frozenset({"ConnectionError", "ClientConnectionError", "HTTPClientError",
                            "ServerTimeoutError", "ConnectTimeoutError", "ReadTimeoutError"})


def is_network_error(err: BaseException) -> bool:
    """Whether ``err`` is a failure to reach or hear from a server (exit 7)."""
    if isinstance(err, ConnectionError | TimeoutError):
        return True
    package = type(err).__module__.split(".")[0]
    if package in _HTTP_CLIENTS:
        return True
    return package in _OBJECT_STORE_CLIENTS and any(
        base.__name__ in _NETWORK_BASES for base in type(err).__mro__)


def from_os_error(err: BaseException, *, step: int | None = None) -> FlqAuditError:
    """One error, with a one-line message, for an operating-system or network failure.

    The message says what failed, where (file, step) and that the store stays resumable.
    """
    where = f" at step {step}" if step is not None else ""
    resume = _RESUME if step is not None else "nothing flq-audit made was lost: fix the cause " \
        "and rerun the same command"
    filename = getattr(err, "filename", None)
    target = f" on {str(filename)!r}" if filename else ""
    code = getattr(err, "errno", None)
    if isinstance(err, FileNotFoundError) or code == errno.ENOENT:
        return CheckpointNotFoundError(
            f"file vanished or missing{target}{where} (ENOENT); {resume}",
            path=filename, step=step)
    if code in _OS_REASONS:
        return SystemResourceError(f"{_OS_REASONS[code]}{target}{where}; {resume}",
                                   path=filename, step=step)
    if is_network_error(err) or not isinstance(err, OSError):
        return NetworkError(
            f"network failure{where}: {type(err).__name__}: {_first_line(err)}; {resume}",
            step=step)
    return SystemResourceError(
        f"system error{target}{where}: {_first_line(err)}; {resume}", path=filename, step=step)


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


# ---------------------------------------------------------------- METRICS / EXPORT
class MetricError(FlqAuditError, ValueError):
    """A metric cannot be computed from what the store holds."""


class ExportError(FlqAuditError):
    """Exporting a store to NetCDF, CSV or figures failed."""


class ExportFolderNotFoundError(ExportError, FileNotFoundError):
    """The folder an export target names does not exist."""

    exit_code = EXIT_INPUT_MISSING


# ---------------------------------------------------------------- WARNINGS
class FlqAuditWarning(UserWarning):
    """Something worth knowing that does not stop the audit."""


class UnauditedFilesWarning(FlqAuditWarning):
    """Files in the checkpoint folder that the audit leaves out (one warning lists them all)."""


class MovedRevisionWarning(FlqAuditWarning):
    """Done steps whose Hub branch now points at another commit than the store pinned."""


class NotPlainSGDWarning(FlqAuditWarning):
    """The FL residual's checkpoints are not plain SGD steps (``fl_r_step`` well above 0)."""


__all__ = [
    "CaptureError",
    "CheckpointNotFoundError",
    "ExportError",
    "ExportFolderNotFoundError",
    "FlqAuditError",
    "FlqAuditWarning",
    "IntegrityError",
    "LayerNotFoundError",
    "MetricError",
    "ModelBuildError",
    "ModelNotFoundError",
    "MovedRevisionWarning",
    "NetworkError",
    "NotPlainSGDWarning",
    "OptionError",
    "ProbeError",
    "ProbeNotFoundError",
    "ProbeShapeError",
    "SourceError",
    "StepSelectionError",
    "StepSyntaxError",
    "StoreError",
    "StoreLockedError",
    "StoreMismatchError",
    "StoreNotFoundError",
    "SystemResourceError",
    "UnauditedFilesWarning",
    "UnsafeCheckpointError",
    "UnsafeDeletionError",
    "WeightsError",
    "from_os_error",
    "is_network_error",
]
