"""Typed audit options: one frozen, self-validating dataclass per concern.

The CLI builds these, :mod:`flq_audit.api` takes them, the audit plan keeps them and the
store fingerprint is derived from them (:func:`fingerprint_of`: every field says whether it is
part of the fingerprint). Field names match the CLI flags (``task=`` is ``--task``,
``max_samples=`` is ``--max-samples``); a field with a fixed set of values has a
:class:`Choice` enum that the CLI offers. Every check raises
:class:`~flq_audit.errors.OptionError` (a usage error, exit 2) naming the allowed values.
The FL residual's options live with the FL extension
(:mod:`flq_audit.audit.extensions.fl_inputs`) and are re-exported here. This module imports
neither torch nor transformers.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import MISSING, dataclass, field, fields
from enum import Enum
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from flq_audit.errors import OptionError
from flq_audit.probes import parse_probe_keys

if TYPE_CHECKING:
    from flq_audit.audit.extensions.fl_inputs import FLOptions


class Choice(str, Enum):
    """A fixed set of string values: each member equals, and prints as, its value."""

    def __str__(self) -> str:
        return str(self.value)

    @classmethod
    def values(cls) -> tuple[str, ...]:
        return tuple(str(member.value) for member in cls)


class ActivationDtypeChoice(Choice):
    float32 = "float32"
    float16 = "float16"
    float64 = "float64"


class GramDtypeChoice(Choice):
    float32 = "float32"
    float64 = "float64"


class GramsChoice(Choice):
    full = "full"
    compact = "compact"
    spectrum = "spectrum"
    none = "none"


class ReplayDtypeChoice(Choice):
    bfloat16 = "bfloat16"
    float16 = "float16"
    float32 = "float32"
    float64 = "float64"


class TaskChoice(Choice):
    sequence = "sequence"
    token = "token"
    next_token = "next-token"


class PoolingChoice(Choice):
    cls = "cls"
    last = "last"
    mean = "mean"


class CacheChoice(Choice):
    keep = "keep"
    drop = "drop"


ACTIVATION_DTYPES = ActivationDtypeChoice.values()
GRAM_DTYPES = GramDtypeChoice.values()
GRAM_FORMS = GramsChoice.values()
REPLAY_DTYPES = ReplayDtypeChoice.values()
TEXT_TASKS = TaskChoice.values()
POOLINGS = PoolingChoice.values()
CACHE_MODES = CacheChoice.values()
#: The most torch intra-op threads ``--threads`` takes (more only contend for the cores, and
#: the operating system refuses to start tens of thousands of threads).
MAX_THREADS = 1024

#: The ``field(metadata=...)`` key that says how a field enters the store fingerprint.
FINGERPRINT = "fingerprint"
#: Always recorded in the store's ``capture_config`` (and compared on resume).
ALWAYS = {FINGERPRINT: "always"}
#: Recorded when not at its default (a store written before the option existed still
#: resumes with the default). A field without a marker is treated so.
WHEN_SET = {FINGERPRINT: "when set"}


def not_fingerprinted(reason: str) -> dict[str, str]:
    """Metadata of a field left out of the store fingerprint, with the reason."""
    return {FINGERPRINT: "no", "reason": reason}


def fingerprint_of(options: Any) -> dict[str, Any]:
    """The fields of an options dataclass that decide what is stored, as JSON values.

    ``always`` fields are recorded as they are, ``when set`` fields (and fields without a
    marker: a new option cannot escape the resume check) when they differ from their
    default, ``no`` fields never. A field's ``metadata["as"]`` turns its value into JSON.
    """
    out: dict[str, Any] = {}
    for spec in fields(options):
        how = spec.metadata.get(FINGERPRINT, WHEN_SET[FINGERPRINT])
        value = getattr(options, spec.name)
        if how == "no" or (how == "when set" and value == _default(spec)):
            continue
        convert = spec.metadata.get("as", _json_value)
        out[spec.name] = convert(value)
    return out


def _default(spec: Any) -> Any:
    if spec.default is not MISSING:
        return spec.default
    if spec.default_factory is not MISSING:
        return spec.default_factory()
    return MISSING


def _json_value(value: Any) -> Any:
    """Tuples as lists, mappings with string keys, enum members as their values."""
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, Mapping):
        return {str(k): _json_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_value(v) for v in value]
    return value


def one_of(option: str, value: object, allowed: Sequence[str]) -> str:
    """``value`` as a plain string (an enum member gives its value), if it is allowed."""
    if isinstance(value, Enum):
        value = value.value
    if value not in allowed:
        raise OptionError(
            f"{option} must be one of {', '.join(map(str, allowed))}; got {value!r}")
    return str(value)


def positive_int(option: str, value: object, *, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise OptionError(f"{option} must be an integer >= 1; got {value!r}")


@dataclass(frozen=True, kw_only=True)
class CaptureOptions:
    """What is captured: layers, storage dtypes, probe size, the residual stream."""

    layers: tuple[str, ...] = field(default=(), metadata=not_fingerprinted(
        "the patterns as typed; the store records the layer names they select"))
    activation_dtype: Literal["float32", "float16", "float64"] = field(
        default="float32", metadata=ALWAYS)
    gram_dtype: Literal["float32", "float64"] = field(default="float32", metadata=ALWAYS)
    #: What is kept of each weight's Gram (``--grams``): ``compact`` the cheaper exact form
    #: (WᵀW, or W itself when it has fewer rows than columns), ``full`` always WᵀW,
    #: ``spectrum`` its eigenvalues only, ``none`` nothing. A store keeps the form it was
    #: made with (a store written before the option holds ``full`` Grams).
    grams: Literal["full", "compact", "spectrum", "none"] = field(
        default="compact", metadata=WHEN_SET)
    #: The dtype the probe replays in (``--dtype``); ``None``: the loader's default.
    replay_dtype: Literal["bfloat16", "float16", "float32", "float64"] | None = field(
        default=None, metadata=not_fingerprinted(
            "the store records the dtype the loader resolved, when not the legacy one"))
    max_samples: int | None = field(default=None, metadata=ALWAYS)
    hidden_states: bool = field(default=False, metadata=WHEN_SET)
    extensions: tuple[str, ...] = field(default=(), metadata=WHEN_SET)  # --extension NAME

    def __post_init__(self) -> None:
        for key, value in (("layers", self.layers), ("extensions", self.extensions)):
            value = (value,) if isinstance(value, str) else value  # one name or several
            object.__setattr__(self, key, tuple(str(v) for v in value))
        object.__setattr__(self, "activation_dtype", one_of(
            "--activation-dtype (activation_dtype)", self.activation_dtype, ACTIVATION_DTYPES))
        object.__setattr__(self, "gram_dtype", one_of(
            "--gram-dtype (gram_dtype)", self.gram_dtype, GRAM_DTYPES))
        object.__setattr__(self, "grams", one_of("--grams (grams)", self.grams, GRAM_FORMS))
        if self.replay_dtype is not None:
            object.__setattr__(self, "replay_dtype", one_of(
                "--dtype (replay_dtype)", self.replay_dtype, REPLAY_DTYPES))
        if self.activation_dtype == "float64":  # a float64 replay keeps float64 Grams too
            object.__setattr__(self, "gram_dtype", "float64")
        positive_int("--max-samples (max_samples)", self.max_samples, allow_none=True)


def _cluster_options(workers: int | str | None, scheduler: str | None) -> int | str | None:
    """``--workers N`` (N >= 2) or ``--workers auto``, or ``--scheduler ADDRESS``, not both;
    returns ``workers`` as an int or ``"auto"`` (the CLI passes it as text)."""
    if isinstance(workers, str):
        text = workers.strip().lower()
        if text != "auto" and not text.isdigit():
            raise OptionError(f"--workers (workers) must be an integer >= 2 or auto; got "
                              f"{workers!r}")
        workers = "auto" if text == "auto" else int(text)
    if not isinstance(workers, str):
        positive_int("--workers (workers)", workers, allow_none=True)
    if workers == 1:
        raise OptionError("--workers (workers) must be 2 or more; one worker is the sequential "
                          "audit: leave --workers out")
    if scheduler is not None and not (isinstance(scheduler, str) and scheduler.strip()):
        raise OptionError(f"--scheduler (scheduler) must be an address such as "
                          f"tcp://HOST:8786; got {scheduler!r}")
    if workers is not None and scheduler is not None:
        raise OptionError("give --workers (a local cluster) or --scheduler (an existing "
                          "cluster), not both")
    return workers


@dataclass(frozen=True, kw_only=True)
class RunOptions:
    """How an audit runs; none of these change what is stored."""

    batch_size: int = 512
    device: str = "auto"
    overwrite: bool = False
    trust_pickle: bool = False
    trust_remote_code: bool = False
    #: (inputs, targets) array names in probe files; ``"INPUTS,TARGETS"`` is accepted too.
    probe_keys: tuple[str, str] | None = None
    #: torch intra-op threads (``--threads``); ``None`` keeps torch's default.
    threads: int | None = None
    #: Fetch and load step k+1 on a background thread while step k replays.
    prefetch: bool = True
    #: Re-audit the done steps whose Hub branch now points at another commit than the one
    #: the store pinned (into the same store; every other step is kept).
    reaudit_moved: bool = False

    #: Run the steps in this many processes (this one and a LocalCluster of the others), or
    #: ``"auto"``: as many as pay off (:func:`flq_audit.scheduler.auto_workers`).
    workers: int | str | None = None
    #: Run the steps on the dask.distributed cluster at this address.
    scheduler: str | None = None

    def __post_init__(self) -> None:
        positive_int("--batch-size (batch_size)", self.batch_size)
        positive_int("--threads (threads)", self.threads, allow_none=True)
        if self.threads is not None and self.threads > MAX_THREADS:
            raise OptionError(f"--threads (threads) must be between 1 and {MAX_THREADS}; got "
                              f"{self.threads}", hint="A value near the number of CPU cores is "
                              "fastest; leave --threads out for torch's own choice.")
        object.__setattr__(self, "workers", _cluster_options(self.workers, self.scheduler))
        object.__setattr__(self, "probe_keys", parse_probe_keys(self.probe_keys))
        if not (self.device in ("auto", "cpu") or self.device.startswith(("cuda", "mps"))):
            raise OptionError(
                f"--device (device) must be one of auto, cpu, cuda, cuda:N; got {self.device!r}")


@dataclass(frozen=True, kw_only=True)
class SourceOptions:
    """Options of the checkpoint source: Hugging Face Hub sources, and the two a local
    folder takes (``name_pattern``, ``step_from_key``)."""

    revision_pattern: str | None = None
    subfolders: bool | None = None
    template_steps: tuple[int, ...] = ()
    cache: Literal["keep", "drop"] = "keep"
    offline: bool | None = None
    name_pattern: str | None = None
    step_from_key: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "cache", one_of("--cache (cache)", self.cache, CACHE_MODES))
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
        """The keyword arguments of the source family, only those that are set."""
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

    task: Literal["sequence", "token", "next-token"] = field(default="sequence", metadata=ALWAYS)
    #: ``None``: chosen from the model when the audit is planned (``last`` for a causal LM,
    #: ``cls`` otherwise; see :func:`flq_audit.models.hf.default_pooling`).
    pooling: Literal["cls", "last", "mean"] | None = field(default=None, metadata=ALWAYS)
    text_column: str = field(default="text", metadata=ALWAYS)
    label_column: str = field(default="label", metadata=ALWAYS)
    max_length: int = field(default=128, metadata=ALWAYS)
    top_k: int = field(default=50, metadata=ALWAYS)

    def __post_init__(self) -> None:
        object.__setattr__(self, "task", one_of("--task (task)", self.task, TEXT_TASKS))
        if self.pooling is not None:
            object.__setattr__(self, "pooling",
                               one_of("--pooling (pooling)", self.pooling, POOLINGS))
        positive_int("--max-length (max_length)", self.max_length)
        positive_int("--top-k (top_k)", self.top_k)

    def to_json_dict(self) -> dict[str, Any]:
        """The text part of the store fingerprint."""
        return fingerprint_of(self)


#: The defaults, shared (the objects are frozen).
DEFAULT_CAPTURE = CaptureOptions()
DEFAULT_RUN = RunOptions()


def __getattr__(name: str) -> Any:
    """``FLOptions`` from the FL extension (loaded on first use); ``HubOptions``, the old
    name of :class:`SourceOptions`, with a :class:`DeprecationWarning`."""
    if name == "FLOptions":
        from flq_audit.audit.extensions.fl_inputs import FLOptions

        return FLOptions
    if name == "HubOptions":
        warnings.warn("flq_audit.options.HubOptions is deprecated: use SourceOptions (the same "
                      "class)", DeprecationWarning, stacklevel=2)
        return SourceOptions
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "ACTIVATION_DTYPES",
    "DEFAULT_CAPTURE",
    "DEFAULT_RUN",
    "MAX_THREADS",
    "ActivationDtypeChoice",
    "CacheChoice",
    "CaptureOptions",
    "Choice",
    "FLOptions",
    "GramDtypeChoice",
    "GramsChoice",
    "PoolingChoice",
    "ReplayDtypeChoice",
    "RunOptions",
    "SourceOptions",
    "TaskChoice",
    "TextProbeOptions",
    "fingerprint_of",
    "not_fingerprinted",
    "parse_probe_keys",
]
