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
