"""Typed audit options: one frozen, self-validating dataclass per concern.

The CLI builds these, :mod:`flq_audit.api` takes them, the audit plan keeps them and the
store fingerprint is derived from them. Field names match the CLI flags (``task=`` is
``--task``, ``max_samples=`` is ``--max-samples``). Every check raises
:class:`~flq_audit.errors.OptionError` (a usage error, exit 2) naming the allowed values.
This module imports neither torch nor transformers.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from flq_audit.errors import CaptureError, OptionError, ProbeError, ProbeNotFoundError

ACTIVATION_DTYPES = ("float32", "float16")
GRAM_DTYPES = ("float32", "float64")
TEXT_TASKS = ("sequence", "token", "next-token")
POOLINGS = ("cls", "last", "mean")
CACHE_MODES = ("keep", "drop")
FL_LOSSES = ("ce", "mse")


def _one_of(option: str, value: object, allowed: Sequence[object]) -> None:
    if value not in allowed:
        raise OptionError(
            f"{option} must be one of {', '.join(map(str, allowed))}; got {value!r}")


def _positive_int(option: str, value: object, *, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise OptionError(f"{option} must be an integer >= 1; got {value!r}")


@dataclass(frozen=True, kw_only=True)
class CaptureOptions:
    """What is captured: layers, storage dtypes, probe size, the residual stream."""

    layers: tuple[str, ...] = ()
    activation_dtype: Literal["float32", "float16"] = "float32"
    gram_dtype: Literal["float32", "float64"] = "float32"
    max_samples: int | None = None
    hidden_states: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.layers, str):
            object.__setattr__(self, "layers", (self.layers,))
        object.__setattr__(self, "layers", tuple(str(pattern) for pattern in self.layers))
        _one_of("--activation-dtype (activation_dtype)", self.activation_dtype, ACTIVATION_DTYPES)
        _one_of("--gram-dtype (gram_dtype)", self.gram_dtype, GRAM_DTYPES)
        _positive_int("--max-samples (max_samples)", self.max_samples, allow_none=True)


def _cluster_options(workers: int | None, scheduler: str | None) -> None:
    """``--workers N`` (N >= 2) or ``--scheduler ADDRESS``, not both."""
    _positive_int("--workers (workers)", workers, allow_none=True)
    if workers == 1:
        raise OptionError("--workers (workers) must be 2 or more; one worker is the sequential "
                          "audit: leave --workers out")
    if scheduler is not None and not (isinstance(scheduler, str) and scheduler.strip()):
        raise OptionError(f"--scheduler (scheduler) must be an address such as "
                          f"tcp://HOST:8786; got {scheduler!r}")
    if workers is not None and scheduler is not None:
        raise OptionError("give --workers (a local cluster) or --scheduler (an existing "
                          "cluster), not both")


@dataclass(frozen=True, kw_only=True)
class RunOptions:
    """How an audit runs; none of these change what is stored."""

    batch_size: int = 512
    device: str = "auto"
    overwrite: bool = False
    trust_pickle: bool = False
    trust_remote_code: bool = False
    #: Run the steps on a LocalCluster of this many single-threaded worker processes.
    workers: int | None = None
    #: Run the steps on the dask.distributed cluster at this address.
    scheduler: str | None = None

    def __post_init__(self) -> None:
        _positive_int("--batch-size (batch_size)", self.batch_size)
        _cluster_options(self.workers, self.scheduler)
        if not (self.device in ("auto", "cpu") or self.device.startswith(("cuda", "mps"))):
            raise OptionError(
                f"--device (device) must be one of auto, cpu, cuda, cuda:N; got {self.device!r}")


@dataclass(frozen=True, kw_only=True)
class HubOptions:
    """Options of Hugging Face Hub sources (a local folder takes none)."""

    revision_pattern: str | None = None
    subfolders: bool | None = None
    template_steps: tuple[int, ...] = ()
    cache: Literal["keep", "drop"] = "keep"
    offline: bool | None = None

    def __post_init__(self) -> None:
        _one_of("--cache (cache)", self.cache, CACHE_MODES)
        try:
            steps = tuple(int(step) for step in self.template_steps)
        except (TypeError, ValueError):
            raise OptionError(
                f"--template-steps (template_steps) must be integers; got {self.template_steps!r}"
            ) from None
        object.__setattr__(self, "template_steps", steps)

    def source_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of the Hub source family, only those that are set."""
        given: dict[str, Any] = {
            "revision_pattern": self.revision_pattern, "subfolders": self.subfolders,
            "template_steps": list(self.template_steps) or None,
            "cache": None if self.cache == "keep" else self.cache, "offline": self.offline,
        }
        return {key: value for key, value in given.items() if value is not None}


@dataclass(frozen=True, kw_only=True)
class TextProbeOptions:
    """How a text probe (``.jsonl``/``.csv``) becomes rows (see :mod:`flq_audit.probes.text`)."""

    task: Literal["sequence", "token", "next-token"] = "sequence"
    pooling: Literal["cls", "last", "mean"] = "cls"
    text_column: str = "text"
    label_column: str = "label"
    max_length: int = 128
    top_k: int = 50

    def __post_init__(self) -> None:
        _one_of("--task (task)", self.task, TEXT_TASKS)
        _one_of("--pooling (pooling)", self.pooling, POOLINGS)
        _positive_int("--max-length (max_length)", self.max_length)
        _positive_int("--top-k (top_k)", self.top_k)

    def to_json_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, kw_only=True)
class FLOptions:
    """Training provenance the FL residual needs: loss, learning rate(s) and batches.

    ``lr`` is one rate or ``{step: rate}``; ``batches`` is ``"full"`` (the whole probe was
    each step's batch) or ``{step: probe indices}``.
    """

    loss: Literal["ce", "mse"]
    lr: float | Mapping[int, float]
    batches: Literal["full"] | Mapping[int, tuple[int, ...]] = "full"

    def __post_init__(self) -> None:
        _one_of("--fl-loss (loss)", self.loss, FL_LOSSES)
        if isinstance(self.lr, Mapping):
            rates = {int(k): float(v) for k, v in self.lr.items()}
            object.__setattr__(self, "lr", rates)
            values = list(rates.values())
        else:
            if isinstance(self.lr, bool) or not isinstance(self.lr, int | float):
                raise OptionError(f"--fl-lr (lr) must be a number or {{step: lr}}; got {self.lr!r}")
            object.__setattr__(self, "lr", float(self.lr))
            values = [float(self.lr)]
        if not all(math.isfinite(v) and v > 0 for v in values):
            raise OptionError(f"--fl-lr (lr) must be positive and finite; got {self.lr!r}")
        if isinstance(self.batches, str):
            _one_of("--fl-batches (batches)", self.batches, ("full", "a {step: [indices]} map"))
        elif isinstance(self.batches, Mapping):
            object.__setattr__(self, "batches", {
                int(k): tuple(int(i) for i in v) for k, v in self.batches.items()})
        else:
            raise OptionError(
                f"--fl-batches (batches) must be 'full' or {{step: [indices]}}; got {self.batches!r}")

    @classmethod
    def from_files(cls, loss: str, lr: str | float, batches: str) -> FLOptions:
        """From the CLI's strings: ``lr`` a number or a JSON file ``{step: lr}``; ``batches``
        ``full`` or a JSON file ``{step: [indices]}`` (optionally nested under ``"batches"``,
        as the ``sgd_every_step`` recipe writes it)."""
        rate: float | dict[int, float]
        try:
            rate = float(lr)
        except ValueError:
            rate = {int(k): float(v) for k, v in _read_json(str(lr), "--fl-lr").items()}
        if batches == "full":
            return cls(loss=loss, lr=rate, batches="full")  # type: ignore[arg-type]
        data = _read_json(batches, "--fl-batches")
        data = data.get("batches", data)
        return cls(loss=loss, lr=rate,  # type: ignore[arg-type]
                   batches={int(k): tuple(int(i) for i in v) for k, v in data.items()})

    def lr_at(self, step: int) -> float:
        """The learning rate of the update that starts at ``step``."""
        if isinstance(self.lr, Mapping):
            if step not in self.lr:
                raise CaptureError(f"FL residual: no learning rate recorded for step {step}",
                                   step=step, hint="Give --fl-lr a value for every step.")
            return self.lr[step]
        return self.lr

    def batch_at(self, step: int, n_samples: int) -> np.ndarray:
        """Probe indices of the batch the update from ``step`` trained on."""
        if not isinstance(self.batches, Mapping):
            return np.arange(n_samples)
        if step not in self.batches:
            raise CaptureError(
                f"FL residual: no batch recorded for step {step} (the update from step {step} "
                "to the next checkpoint)", step=step,
                hint="The batches file must list the probe indices of every selected step.",
            )
        batch = np.asarray(self.batches[step], dtype=np.int64)
        if batch.size == 0 or batch.min() < 0 or batch.max() >= n_samples:
            raise ProbeError(
                f"FL residual: batch of step {step} holds indices outside [0, {n_samples})",
                step=step,
            )
        return batch

    def to_json_dict(self) -> dict[str, object]:
        """The FL part of the store fingerprint (batch sizes, not the indices)."""
        return {"loss": self.loss, "lr": self.lr if not isinstance(self.lr, Mapping) else
                {str(k): v for k, v in self.lr.items()},
                "batches": "full" if not isinstance(self.batches, Mapping) else
                {str(k): len(v) for k, v in self.batches.items()}}


#: The defaults, shared (the objects are frozen).
DEFAULT_CAPTURE = CaptureOptions()
DEFAULT_RUN = RunOptions()


def _read_json(path: str | Path, flag: str) -> dict[str, Any]:
    from flq_audit.audit.json_files import read_json_object

    return read_json_object(path, f"{flag} file", missing=ProbeNotFoundError, invalid=ProbeError)


__all__ = [
    "DEFAULT_CAPTURE",
    "DEFAULT_RUN",
    "CaptureOptions",
    "FLOptions",
    "HubOptions",
    "RunOptions",
    "TextProbeOptions",
]
