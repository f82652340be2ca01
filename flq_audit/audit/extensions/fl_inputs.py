"""The FL residual's inputs: the training provenance as options, parsed and checked.

:class:`FLOptions` holds the loss, the learning rate(s), each step's batch and the training
set; :meth:`FLOptions.from_files` and :func:`fl_options` read the command line's strings
(``--fl-lr`` a number or a JSON file, ``--fl-batches`` ``full`` or a JSON file). Every check
raises an :class:`~flq_audit.errors.OptionError` or a :class:`~flq_audit.errors.ProbeError`
naming the option or the file. This module imports neither torch nor transformers; the
extension itself is :mod:`flq_audit.audit.extensions.fl`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import numpy as np

from flq_audit.errors import CaptureError, OptionError, ProbeError, ProbeNotFoundError
from flq_audit.options import ALWAYS, Choice, fingerprint_of, not_fingerprinted, one_of
from flq_audit.probes import parse_probe_keys


class FLLossChoice(Choice):
    ce = "ce"
    mse = "mse"


FL_LOSSES = FLLossChoice.values()
FLLoss = Literal["ce", "mse"]


def _rates_json(lr: float | Mapping[int, float]) -> object:
    return {str(k): v for k, v in lr.items()} if isinstance(lr, Mapping) else lr


def _batch_sizes(batches: object) -> object:
    """Batch sizes, not the indices (the fingerprint stays small)."""
    if isinstance(batches, Mapping):
        return {str(k): len(v) for k, v in batches.items()}
    if isinstance(batches, tuple):
        return [len(v) for v in batches]
    return "full"


@dataclass(frozen=True, kw_only=True)
class FLOptions:
    """Training provenance the FL residual needs: loss, learning rate(s), batches, data.

    ``lr`` is one rate or ``{step: rate}``; ``batches`` is ``"full"`` (the whole probe was
    each step's batch), ``{step: probe indices}`` or a list of index lists, one per update in
    the order of the source's steps. ``probe`` is the training set the indices point into
    (``--fl-probe``; default: the audit's probe), ``batches_file`` names the file the
    batches came from in messages.
    """

    loss: FLLoss = field(metadata=ALWAYS)
    lr: float | Mapping[int, float] = field(metadata={**ALWAYS, "as": _rates_json})
    batches: Literal["full"] | Mapping[int, tuple[int, ...]] | tuple[tuple[int, ...], ...] = field(
        default="full", metadata={**ALWAYS, "as": _batch_sizes})
    probe: str | None = field(default=None, metadata=not_fingerprinted(
        "recorded by content: the name, size and hash of the probe it loads"))
    probe_keys: tuple[str, str] | None = field(default=None, metadata=not_fingerprinted(
        "which arrays are read shows in the FL probe's hash"))
    batches_file: str | None = field(default=None, metadata=not_fingerprinted(
        "names the batches' file in messages; the batches are recorded"))

    def __post_init__(self) -> None:
        object.__setattr__(self, "loss", one_of("--fl-loss (loss)", self.loss, FL_LOSSES))
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
            one_of("--fl-batches (batches)", self.batches, ("full", "a {step: [indices]} map"))
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
        name: FLLoss = FLLossChoice(one_of("--fl-loss (loss)", loss, FL_LOSSES)).value
        if batches == "full":
            return cls(loss=name, lr=rate, batches="full", probe=probe, probe_keys=keys)
        data: Any = _read_json(batches, "--fl-batches")
        data = data.get("batches", data)
        _require_batches(data, batches)
        return cls(loss=name, lr=rate, batches=data, probe=probe, probe_keys=keys,
                   batches_file=batches)

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
        out: dict[str, object] = fingerprint_of(self)
        probe = self.training_probe()
        if probe is not None:
            out["probe"] = {"name": probe.name, "n_samples": probe.n_samples,
                            "fingerprint": probe.fingerprint}
        return out


def fl_options(loss: str | None, lr: str | None, batches: str | None,
               probe: str | None = None, probe_keys: str | tuple[str, str] | None = None,
               ) -> FLOptions | None:
    """The FL flags (``--fl-loss``, ``--fl-lr``, ``--fl-batches``, ``--fl-probe``) as options:
    all three or none, since the residual needs the whole training provenance."""
    if loss is None and lr is None and batches is None:
        if probe is not None:
            raise OptionError("--fl-probe needs --fl-loss, --fl-lr and --fl-batches "
                              "(the training provenance)")
        return None
    if loss is None or lr is None or batches is None:
        raise OptionError("the FL residual needs all of --fl-loss, --fl-lr and --fl-batches "
                          "(the training provenance)")
    return FLOptions.from_files(loss, lr, batches, probe=probe, probe_keys=probe_keys)


def _require_batches(data: object, where: str) -> None:
    """A batches file holds a map or a list (its entries are checked by :class:`FLOptions`)."""
    if not isinstance(data, dict | list):
        raise ProbeError(
            f"--fl-batches file {where!r}: \"batches\" must be {{step: [indices]}} or a "
            f"list of index lists in step order; got {type(data).__name__}", path=where)


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


def _read_json(path: str | Path, flag: str) -> dict[str, Any]:
    from flq_audit.audit.json_files import read_json_object

    return read_json_object(path, f"{flag} file", missing=ProbeNotFoundError, invalid=ProbeError)


__all__ = ["FL_LOSSES", "FLLossChoice", "FLOptions", "fl_options"]
