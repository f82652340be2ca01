"""Compare two audit stores variable by variable, bitwise (read with plain zarr)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np


def _arrays(group: Any, prefix: str = "") -> dict[str, Any]:
    """Every array of a zarr group and its subgroups, by path."""
    found = {f"{prefix}{name}": array for name, array in group.arrays()}
    for name, sub in group.groups():
        found.update(_arrays(sub, f"{prefix}{name}/"))
    return found


def _same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    if a.dtype.kind in "OUST":  # strings (fixed width or variable): equal as values
        return a.shape == b.shape and [str(v) for v in a.ravel()] == [str(v) for v in b.ravel()]
    return a.tobytes() == b.tobytes()  # NaN padding must match bit for bit too


def store_differences(
    left: str | Path, right: str | Path, *, ignore_attrs: Iterable[str] = (),
) -> list[str]:
    """What differs between two stores: variable names, shapes, dtypes, bytes, attributes.

    An empty list means every variable is bitwise equal and the root attributes agree
    (except ``ignore_attrs``).
    """
    import zarr

    a, b = zarr.open_group(str(left), mode="r"), zarr.open_group(str(right), mode="r")
    arrays_a, arrays_b = _arrays(a), _arrays(b)
    diffs = [f"only in {side}: {sorted(names)}" for side, names in (
        ("left", set(arrays_a) - set(arrays_b)), ("right", set(arrays_b) - set(arrays_a)))
        if names]
    for name in sorted(set(arrays_a) & set(arrays_b)):
        x, y = arrays_a[name], arrays_b[name]
        if x.shape != y.shape or x.dtype != y.dtype:
            diffs.append(f"{name}: {x.shape} {x.dtype} vs {y.shape} {y.dtype}")
            continue
        vx, vy = np.asarray(x[...]), np.asarray(y[...])
        if not _same_bits(vx, vy):
            diffs.append(f"{name}: values differ")
        if dict(x.attrs) != dict(y.attrs):
            diffs.append(f"{name}: attributes differ")
    ignored = set(ignore_attrs)
    attrs_a = {k: v for k, v in a.attrs.items() if k not in ignored}
    attrs_b = {k: v for k, v in b.attrs.items() if k not in ignored}
    for key in sorted(set(attrs_a) | set(attrs_b)):
        if attrs_a.get(key) != attrs_b.get(key):
            diffs.append(f"attribute {key!r}: {attrs_a.get(key)!r} vs {attrs_b.get(key)!r}")
    return diffs


def assert_same_store(left: str | Path, right: str | Path, **kwargs: Any) -> None:
    """Every variable of the two stores is bitwise equal (see :func:`store_differences`)."""
    diffs = store_differences(left, right, **kwargs)
    assert not diffs, "stores differ:\n  " + "\n  ".join(diffs)


#: The variables an audit writes for every step, and that two audits of the same steps
#: must agree on bit for bit (provenance attributes name their own store, so they differ).
STEP_VARIABLES = ("activations", "gram", "done", "targets", "error", "files", "sha256")


def assert_same_variables(got: Any, want: Any, names: Iterable[str] = STEP_VARIABLES) -> None:
    """The named arrays of two stores (zarr groups, paths or URLs) are bitwise equal."""
    import zarr

    def group(store: Any) -> Any:
        return zarr.open_group(str(store), mode="r") if isinstance(store, (str, Path)) else store

    left, right = group(got), group(want)
    for name in names:
        x, y = np.asarray(left[name][:]), np.asarray(right[name][:])
        assert _same_bits(x, y), f"{name} differs"


def audited_reference(run: Path, store: Path, *, batch_size: int = 50) -> Path:
    """``run`` audited by one process into a local ``store``: what concurrent, distributed and
    remote audits of the same run are compared with."""
    from flq_audit import api
    from flq_audit.options import RunOptions

    api.audit(str(run), out=store, run=RunOptions(batch_size=batch_size))
    return store
