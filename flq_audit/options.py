"""Typed audit options: one frozen, self-validating dataclass per concern.

The CLI builds these, :mod:`flq_audit.api` takes them, the audit plan keeps them and the
store fingerprint is derived from them. Field names match the CLI flags (``task=`` is
``--task``, ``max_samples=`` is ``--max-samples``). Every check raises
:class:`~flq_audit.errors.OptionError` (a usage error, exit 2) naming the allowed values.
This module imports neither torch nor transformers.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import numpy as np

from flq_audit.errors import CaptureError, OptionError, ProbeError, ProbeNotFoundError

ACTIVATION_DTYPES = ("float32", "float16", "float64")
GRAM_DTYPES = ("float32", "float64")
TEXT_TASKS = ("sequence", "token", "next-token")
POOLINGS = ("cls", "last", "mean")
CACHE_MODES = ("keep", "drop")
FL_LOSSES = ("ce", "mse")
#: The most torch intra-op threads ``--threads`` takes (more only contend for the cores, and
#: the operating system refuses to start tens of thousands of threads).
MAX_THREADS = 1024


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
    activation_dtype: Literal["float32", "float16", "float64"] = "float32"
    gram_dtype: Literal["float32", "float64"] = "float32"
    max_samples: int | None = None
    hidden_states: bool = False
    extensions: tuple[str, ...] = ()  # enabled by name: --extension NAME

    def __post_init__(self) -> None:
        for key, value in (("layers", self.layers), ("extensions", self.extensions)):
            value = (value,) if isinstance(value, str) else value  # one name or several
            object.__setattr__(self, key, tuple(str(v) for v in value))
        _one_of("--activation-dtype (activation_dtype)", self.activation_dtype, ACTIVATION_DTYPES)
        _one_of("--gram-dtype (gram_dtype)", self.gram_dtype, GRAM_DTYPES)
        if self.activation_dtype == "float64":  # a float64 replay keeps float64 Grams too
            object.__setattr__(self, "gram_dtype", "float64")
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
    probe_keys: tuple[str, str] | None = None  # (inputs, targets) array names in probe files
    #: torch intra-op threads (``--threads``); ``None`` keeps torch's default.
    threads: int | None = None
    #: Fetch and load step k+1 on a background thread while step k replays.
    prefetch: bool = True
    #: Re-audit the done steps whose Hub branch now points at another commit than the one
    #: the store pinned (into the same store; every other step is kept).
    reaudit_moved: bool = False

    #: Run the steps on a LocalCluster of this many single-threaded worker processes.
    workers: int | None = None
    #: Run the steps on the dask.distributed cluster at this address.
    scheduler: str | None = None

    def __post_init__(self) -> None:
        _positive_int("--batch-size (batch_size)", self.batch_size)
        _positive_int("--threads (threads)", self.threads, allow_none=True)
        if self.threads is not None and self.threads > MAX_THREADS:
            raise OptionError(f"--threads (threads) must be between 1 and {MAX_THREADS}; got "
                              f"{self.threads}", hint="A value near the number of CPU cores is "
                              "fastest; leave --threads out for torch's own choice.")
        _cluster_options(self.workers, self.scheduler)
        object.__setattr__(self, "probe_keys", parse_probe_keys(self.probe_keys))
        if not (self.device in ("auto", "cpu") or self.device.startswith(("cuda", "mps"))):
            raise OptionError(
                f"--device (device) must be one of auto, cpu, cuda, cuda:N; got {self.device!r}")


@dataclass(frozen=True, kw_only=True)
class HubOptions:
    """Options of Hugging Face Hub sources, and the two a local folder takes
    (``name_pattern``, ``step_from_key``)."""

    revision_pattern: str | None = None
    subfolders: bool | None = None
    template_steps: tuple[int, ...] = ()
    cache: Literal["keep", "drop"] = "keep"
    offline: bool | None = None
    name_pattern: str | None = None
    step_from_key: str | None = None

    def __post_init__(self) -> None:
        _one_of("--cache (cache)", self.cache, CACHE_MODES)
        if self.step_from_key is not None and not re.fullmatch(r"[A-Za-z_][\w.-]*",
                                                               self.step_from_key):
            raise OptionError("--step-from-key (step_from_key) must be a key name such as "
                              f"epoch, step or global_step; got {self.step_from_key!r}")
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
            "name_pattern": self.name_pattern, "step_from_key": self.step_from_key,
        }
        return {key: value for key, value in given.items() if value is not None}


@dataclass(frozen=True, kw_only=True)
class TextProbeOptions:
    """How a text probe (``.jsonl``/``.csv``) becomes rows (see :mod:`flq_audit.probes.text`)."""

    task: Literal["sequence", "token", "next-token"] = "sequence"
    #: ``None``: chosen from the model when the audit is planned (``last`` for a causal LM,
    #: ``cls`` otherwise; see :func:`flq_audit.models.hf.default_pooling`).
    pooling: Literal["cls", "last", "mean"] | None = None
    text_column: str = "text"
    label_column: str = "label"
    max_length: int = 128
    top_k: int = 50

    def __post_init__(self) -> None:
        _one_of("--task (task)", self.task, TEXT_TASKS)
        if self.pooling is not None:
            _one_of("--pooling (pooling)", self.pooling, POOLINGS)
        _positive_int("--max-length (max_length)", self.max_length)
        _positive_int("--top-k (top_k)", self.top_k)

    def to_json_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, kw_only=True)
class FLOptions:
    """Training provenance the FL residual needs: loss, learning rate(s), batches, data.

    ``lr`` is one rate or ``{step: rate}``; ``batches`` is ``"full"`` (the whole probe was
    each step's batch), ``{step: probe indices}`` or a list of index lists, one per update in
    the order of the source's steps. ``probe`` is the training set the indices point into
    (``--fl-probe``; default: the audit's probe), ``batches_file`` names the file the
    batches came from in messages.
    """

    loss: Literal["ce", "mse"]
    lr: float | Mapping[int, float]
    batches: Literal["full"] | Mapping[int, tuple[int, ...]] | tuple[tuple[int, ...], ...] = "full"
    probe: str | None = None
    probe_keys: tuple[str, str] | None = None
    batches_file: str | None = None

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
        object.__setattr__(self, "probe_keys", parse_probe_keys(self.probe_keys))
        if self.probe is not None:
            object.__setattr__(self, "probe", str(self.probe))
        if isinstance(self.batches, str):
            _one_of("--fl-batches (batches)", self.batches, ("full", "a {step: [indices]} map"))
            return
        where = self.batches_file or "fl batches"
        if isinstance(self.batches, Mapping):
            object.__setattr__(self, "batches", {
                _step_key(k, where): _indices(v, f"step {k}", where)
                for k, v in self.batches.items()})
        elif isinstance(self.batches, list | tuple):
            object.__setattr__(self, "batches", tuple(
                _indices(v, f"batch {i}", where) for i, v in enumerate(self.batches)))
        else:
            raise OptionError(
                f"--fl-batches (batches) must be 'full', {{step: [indices]}} or a list of index "
                f"lists; got {type(self.batches).__name__}")

    @classmethod
    def from_files(cls, loss: str, lr: str | float, batches: str, *, probe: str | None = None,
                   probe_keys: tuple[str, str] | str | None = None) -> FLOptions:
        """From the CLI's strings: ``lr`` a number or a JSON file ``{step: lr}``; ``batches``
        ``full`` or a JSON file ``{step: [indices]}`` or ``{"batches": [[indices], ...]}``
        (a list in step order, or the map nested under ``"batches"``, as the
        ``sgd_every_step`` recipe writes it)."""
        rate: float | dict[int, float]
        try:
            rate = float(lr)
        except ValueError:
            rates = _read_json(str(lr), "--fl-lr")
            rate = {_step_key(k, str(lr)): _rate(v, k, str(lr)) for k, v in rates.items()}
        keys = parse_probe_keys(probe_keys)
        if batches == "full":
            return cls(loss=loss, lr=rate, batches="full",  # type: ignore[arg-type]
                       probe=probe, probe_keys=keys)
        data: Any = _read_json(batches, "--fl-batches")
        data = data.get("batches", data)
        if not isinstance(data, dict | list):
            raise ProbeError(
                f"--fl-batches file {batches!r}: \"batches\" must be {{step: [indices]}} or a "
                f"list of index lists in step order; got {type(data).__name__}", path=batches)
        return cls(loss=loss, lr=rate, batches=data,  # type: ignore[arg-type]
                   probe=probe, probe_keys=keys, batches_file=batches)

    def lr_at(self, step: int) -> float:
        """The learning rate of the update that starts at ``step``."""
        if isinstance(self.lr, Mapping):
            if step not in self.lr:
                raise CaptureError(f"FL residual: no learning rate recorded for step {step}",
                                   step=step, hint="Give --fl-lr a value for every step.")
            return self.lr[step]
        return self.lr

    def for_steps(self, steps: Sequence[int]) -> FLOptions:
        """These options with a batch list mapped onto ``steps`` (the source's steps in order:
        one batch per update, so ``len(steps) - 1`` batches, or one more for the last step)."""
        if not isinstance(self.batches, tuple):
            return self
        count, where = len(self.batches), self.batches_file or "fl batches"
        if count not in (len(steps) - 1, len(steps)):
            raise ProbeError(
                f"--fl-batches file {where!r}: {count} batches for {len(steps)} steps; expected "
                f"{len(steps) - 1} (one per update, steps {steps[0]}…{steps[-1]} in order) or "
                f"{len(steps)}", path=self.batches_file)
        return replace(self, batches=dict(zip(steps, self.batches, strict=False)))

    def batch_at(self, step: int, n_samples: int) -> np.ndarray:
        """Probe indices of the batch the update from ``step`` trained on."""
        if not isinstance(self.batches, Mapping | tuple):
            return np.arange(n_samples)
        if isinstance(self.batches, tuple):
            raise CaptureError("FL residual: a batch list needs the source's steps (for_steps)")
        if step not in self.batches:
            raise CaptureError(
                f"FL residual: no batch recorded for step {step} (the update from step {step} "
                "to the next checkpoint)", step=step, path=self.batches_file,
                hint="The batches file must list the probe indices of every selected step.",
            )
        batch = np.asarray(self.batches[step], dtype=np.int64)
        if batch.size == 0 or batch.min() < 0 or batch.max() >= n_samples:
            where = f" in {self.batches_file!r}" if self.batches_file else ""
            found = "no index" if batch.size == 0 else f"[{batch.min()}, {batch.max()}]"
            raise ProbeError(
                f"FL residual: the batch of step {step}{where} holds indices outside "
                f"[0, {n_samples}) (found {found}); the indices must point into the FL probe "
                f"of {n_samples} samples", step=step, path=self.batches_file,
                hint="Give the training set the indices refer to with --fl-probe.",
            )
        return batch

    def training_probe(self) -> Any:
        """The ``--fl-probe`` probe (loaded once per file), or None: use the audit's probe."""
        if self.probe is None:
            return None
        return _load_training_probe(self.probe, self.probe_keys)

    def to_json_dict(self) -> dict[str, object]:
        """The FL part of the store fingerprint (batch sizes, not the indices; the FL probe's
        hash)."""
        batches: object = "full"
        if isinstance(self.batches, Mapping):
            batches = {str(k): len(v) for k, v in self.batches.items()}
        elif isinstance(self.batches, tuple):
            batches = [len(v) for v in self.batches]
        out: dict[str, object] = {
            "loss": self.loss, "lr": self.lr if not isinstance(self.lr, Mapping) else
            {str(k): v for k, v in self.lr.items()}, "batches": batches}
        probe = self.training_probe()
        if probe is not None:
            out["probe"] = {"name": probe.name, "n_samples": probe.n_samples,
                            "fingerprint": probe.fingerprint}
        return out


def parse_probe_keys(keys: str | Sequence[str] | None) -> tuple[str, str] | None:
    """``"INPUTS,TARGETS"`` or a pair of names as ``(inputs, targets)``."""
    if keys is None:
        return None
    parts = [k.strip() for k in keys.split(",")] if isinstance(keys, str) else list(keys)
    if len(parts) != 2 or not all(isinstance(p, str) and p for p in parts):
        raise OptionError(f"--probe-keys must name two arrays, INPUTS,TARGETS; got {keys!r}")
    return parts[0], parts[1]


@lru_cache(maxsize=2)
def _load_training_probe(path: str, keys: tuple[str, str] | None) -> Any:
    from flq_audit.probes import load_probe

    try:
        return load_probe(path, keys, fallback=True)  # --probe-keys may name --probe's arrays
    except ProbeError as err:
        raise type(err)(f"--fl-probe: {err.message}", path=err.path, hint=err.hint) from err


def _step_key(key: object, where: str) -> int:
    try:
        return int(str(key))
    except ValueError:
        raise ProbeError(f"{where!r}: {key!r} is not a step number (expected {{step: ...}})",
                         path=where) from None


def _rate(value: object, step: object, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ProbeError(f"--fl-lr file {where!r}: the rate of step {step} must be a number; "
                         f"got {value!r}", path=where)
    return float(value)


def _indices(value: object, what: str, where: str) -> tuple[int, ...]:
    """A list of non-negative integer probe indices, or a ProbeError naming the file."""
    if isinstance(value, list | tuple | np.ndarray) and all(
            isinstance(i, int | np.integer) and not isinstance(i, bool) for i in value):
        return tuple(int(i) for i in value)
    raise ProbeError(
        f"--fl-batches file {where!r}: {what} must be a list of integer probe indices; "
        f"got {_short(value)}", path=where)


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


#: The defaults, shared (the objects are frozen).
DEFAULT_CAPTURE = CaptureOptions()
DEFAULT_RUN = RunOptions()


def _read_json(path: str | Path, flag: str) -> dict[str, Any]:
    from flq_audit.audit.json_files import read_json_object

    return read_json_object(path, f"{flag} file", missing=ProbeNotFoundError, invalid=ProbeError)


__all__ = [
    "DEFAULT_CAPTURE",
    "DEFAULT_RUN",
    "MAX_THREADS",
    "CaptureOptions",
    "FLOptions",
    "HubOptions",
    "RunOptions",
    "TextProbeOptions",
    "parse_probe_keys",
]
