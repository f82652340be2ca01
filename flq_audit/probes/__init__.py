"""Probe datasets: the inputs replayed through every checkpoint, and their targets.

Builtins: ``digits`` (scikit-learn 8×8 digits, 1797 samples, 10 classes, pixels scaled to
[0, 1]) and ``swissroll`` (1000 points, continuous target). Files: ``.npz``,
``.safetensors`` or ``.pt`` holding inputs and targets under one of the names of
:data:`PROBE_KEY_PAIRS` (or named by the caller) and optionally ``num_classes``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, NamedTuple

import numpy as np

from flq_audit.errors import OptionError, ProbeError, ProbeNotFoundError

TargetKind = Literal["classes", "continuous"]


@dataclass(frozen=True)
class Probe:
    """Inputs ``(N, ...)`` and targets ``Y``: one-hot ``(N, C)`` or continuous ``(N, k)``."""

    name: str
    inputs: np.ndarray
    targets: np.ndarray
    kind: TargetKind
    labels: np.ndarray | None = None
    num_classes: int | None = None

    @property
    def n_samples(self) -> int:
        return int(self.inputs.shape[0])

    @property
    def fingerprint(self) -> str:
        """sha256 over the inputs, the targets and their shapes and dtypes."""
        digest = hashlib.sha256()
        for array in (self.inputs, self.targets):
            contiguous = np.ascontiguousarray(array)
            digest.update(f"{contiguous.dtype.str}{contiguous.shape}".encode())
            digest.update(contiguous.tobytes())
        return digest.hexdigest()

    def batches(self, batch_size: int):
        """Forward-pass batches (see :class:`flq_audit.probes.batches.ProbeBatch`)."""
        from flq_audit.probes.batches import array_batches

        return array_batches(self.inputs, batch_size)

    def head(self, n: int) -> Probe:
        """The first ``n`` samples (``--max-samples``)."""
        if n >= self.n_samples:
            return self
        labels = None if self.labels is None else self.labels[:n]
        return Probe(self.name, self.inputs[:n], self.targets[:n], self.kind, labels,
                     self.num_classes)


BUILTIN_PROBES = ("digits", "swissroll")
#: (inputs, targets) array names a probe file may use, tried in this order.
PROBE_KEY_PAIRS = (("inputs", "targets"), ("x", "y"), ("X", "y"), ("X", "Y"),
                   ("data", "labels"))


def load_probe(spec: str | Path, keys: tuple[str, str] | None = None, *,
               fallback: bool = False) -> Probe:
    """Load a builtin probe by name or a probe file, validated; raises :class:`ProbeError`.

    ``keys`` names the (inputs, targets) arrays of a file, which must hold them (unless
    ``fallback``: then a file that lacks them is read as without ``keys``); without ``keys``
    the first pair of :data:`PROBE_KEY_PAIRS` the file holds is used.
    """
    text = str(spec)
    if text in BUILTIN_PROBES:
        return _builtin(text)
    path = Path(text).expanduser()
    if not path.is_file():
        raise ProbeNotFoundError(
            f"probe {text!r} is neither a builtin ({', '.join(BUILTIN_PROBES)}) nor an existing "
            "file", path=text,
        )
    arrays = _read_file(path)
    if fallback and keys is not None and not all(key in arrays for key in keys):
        keys = None
    inputs_key, targets_key = probe_keys(arrays, text, keys)
    num_classes = arrays.get("num_classes")
    classes = None if num_classes is None else int(np.asarray(num_classes).reshape(-1)[0])
    return make_probe(path.name, arrays[inputs_key], arrays[targets_key], num_classes=classes)


class ProbeKeys(NamedTuple):
    """The names of a probe file's input and target arrays (``--probe-keys INPUTS,TARGETS``)."""

    inputs: str
    targets: str


def parse_probe_keys(keys: str | Sequence[str] | None) -> ProbeKeys | None:
    """``--probe-keys``: ``"INPUTS,TARGETS"`` or a pair of names, as ``(inputs, targets)``;
    the one parser of the option (the CLI, :class:`~flq_audit.options.RunOptions` and the FL
    options call it)."""
    if keys is None:
        return None
    parts = [k.strip() for k in keys.split(",")] if isinstance(keys, str) else list(keys)
    if len(parts) != 2 or not all(isinstance(p, str) and p for p in parts):
        raise OptionError(f"--probe-keys must name two arrays, INPUTS,TARGETS; got {keys!r}")
    return ProbeKeys(parts[0], parts[1])


def probe_keys(
    arrays: dict[str, np.ndarray], text: str, keys: tuple[str, str] | None = None
) -> tuple[str, str]:
    """The (inputs, targets) names to read from a probe file's ``arrays``: ``keys``
    (``--probe-keys``), which the file must hold, else the first pair of
    :data:`PROBE_KEY_PAIRS` it holds."""
    if keys is not None:
        missing = [key for key in keys if key not in arrays]
        if missing:
            raise ProbeError(
                f"probe file {text!r} holds no array {' or '.join(map(repr, missing))} "
                f"(--probe-keys {','.join(keys)}); it holds {sorted(arrays)}", path=text,
                hint="Name two of its arrays with --probe-keys INPUTS,TARGETS.")
        return keys
    for pair in PROBE_KEY_PAIRS:
        if all(key in arrays for key in pair):
            return pair
    pairs = ", ".join("/".join(pair) for pair in PROBE_KEY_PAIRS)
    raise ProbeError(
        f"probe file {text!r} must hold arrays 'inputs' and 'targets' (or "
        f"{pairs.split(', ', 1)[1]}); it holds {sorted(arrays)}", path=text,
        hint="Name the arrays with --probe-keys INPUTS,TARGETS.",
    )


def make_probe(
    name: str, inputs: np.ndarray, targets: np.ndarray, *, num_classes: int | None = None
) -> Probe:
    """Validate arrays and encode targets.

    Integer targets of shape ``(N,)`` with ``num_classes`` are class labels and become
    one-hot with exactly ``num_classes`` columns; floating targets stay ``(N, k)``.
    """
    inputs = np.asarray(inputs)
    targets = np.asarray(targets)
    if inputs.ndim < 2 or inputs.shape[0] == 0:
        raise ProbeError(f"probe {name!r}: inputs must be (N, ...) with N > 0, got {inputs.shape}")
    if not np.issubdtype(inputs.dtype, np.number) or np.issubdtype(inputs.dtype, np.complexfloating):
        raise ProbeError(f"probe {name!r}: inputs must be real numbers, got dtype {inputs.dtype}")
    # float64 stays float64 (exact FL replays need it); everything else becomes float32
    inputs = inputs.astype(np.float64 if inputs.dtype == np.float64 else np.float32, copy=False)
    if not np.isfinite(inputs).all():
        bad = int((~np.isfinite(inputs)).any(axis=tuple(range(1, inputs.ndim))).sum())
        raise ProbeError(f"probe {name!r}: {bad} input sample(s) contain NaN or infinity")
    if targets.shape[0] != inputs.shape[0]:
        raise ProbeError(
            f"probe {name!r}: {inputs.shape[0]} inputs but {targets.shape[0]} targets"
        )
    if num_classes is not None or np.issubdtype(targets.dtype, np.integer):
        return _class_probe(name, inputs, targets, num_classes)
    targets = targets.astype(np.float64).reshape(targets.shape[0], -1)
    if not np.isfinite(targets).all():
        raise ProbeError(f"probe {name!r}: targets contain NaN or infinity")
    return Probe(name, inputs, targets, "continuous")


def _class_probe(
    name: str, inputs: np.ndarray, targets: np.ndarray, num_classes: int | None
) -> Probe:
    if targets.ndim != 1:
        raise ProbeError(f"probe {name!r}: class labels must be (N,), got {targets.shape}")
    if num_classes is None:
        raise ProbeError(
            f"probe {name!r}: integer targets need 'num_classes' (it is never inferred from the "
            "largest label present)", hint="Save num_classes=C in the probe file.",
        )
    labels = np.asarray(targets)
    if not np.issubdtype(labels.dtype, np.integer):
        if not np.all(np.equal(np.mod(labels, 1), 0)):
            raise ProbeError(f"probe {name!r}: class labels must be integers")
        labels = labels.astype(np.int64)
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ProbeError(
            f"probe {name!r}: labels must lie in [0, {num_classes}), "
            f"found [{labels.min()}, {labels.max()}]"
        )
    onehot = np.zeros((labels.shape[0], num_classes), dtype=np.float64)
    onehot[np.arange(labels.shape[0]), labels] = 1.0
    return Probe(name, inputs, onehot, "classes", labels.astype(np.int64), int(num_classes))


def _builtin(name: str) -> Probe:
    if name == "digits":
        from sklearn.datasets import load_digits

        data = load_digits()
        return make_probe("digits", (data.data / 16.0).astype(np.float32), data.target, num_classes=10)
    from sklearn.datasets import make_swiss_roll

    points, t = make_swiss_roll(1000, random_state=0)
    xy = points[:, [0, 2]]
    xy = (xy - xy.min(0)) / (xy.max(0) - xy.min(0))
    t = (t - t.min()) / (t.max() - t.min())
    return make_probe("swissroll", xy.astype(np.float32), t[:, None])


def _read_file(path: Path) -> dict[str, np.ndarray]:
    suffix = path.suffix.lower()
    try:
        if suffix == ".npz":
            with np.load(path, allow_pickle=False) as data:
                return {k: data[k] for k in data.files}
        if suffix == ".safetensors":
            from safetensors.numpy import load_file

            return dict(load_file(str(path)))
        if suffix in (".pt", ".pth"):
            import torch

            obj = torch.load(str(path), map_location="cpu", weights_only=True)
            if not isinstance(obj, dict):
                raise ProbeError(f"probe file {str(path)!r} must hold a dict of tensors", path=path)
            return {k: (v.numpy() if hasattr(v, "numpy") else np.asarray(v)) for k, v in obj.items()}
    except ProbeError:
        raise
    except Exception as err:
        raise ProbeError(f"cannot read probe file {str(path)!r} ({err})", path=path) from err
    raise ProbeError(
        f"probe file {str(path)!r}: unsupported extension {suffix!r}; "
        "expected .npz, .safetensors or .pt", path=path,
    )


__all__ = ["BUILTIN_PROBES", "PROBE_KEY_PAIRS", "Probe", "ProbeKeys", "load_probe", "make_probe",
           "parse_probe_keys", "probe_keys"]
