"""Compare folders and stores: hashes of every file, and stores array by array, bitwise."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np


def tree_hashes(*roots: Path) -> dict[str, str]:
    """``{relative path: sha256}`` of every file (and ``->target`` of every link) under roots."""
    out: dict[str, str] = {}
    for root in roots:
        if root.is_file():
            out[str(root)] = hashlib.sha256(root.read_bytes()).hexdigest()
            continue
        for folder, dirs, files in os.walk(root):
            for name in dirs + files:
                path = Path(folder) / name
                key = str(path)
                if path.is_symlink():
                    out[key] = "->" + os.readlink(path)
                elif path.is_file():
                    out[key] = hashlib.sha256(path.read_bytes()).hexdigest()
                else:
                    out[key] = "dir"
    return out


def assert_same_store(got: Path, want: Path) -> None:
    """Every array bitwise equal (NaNs included), same dtypes and shapes, same root attrs."""
    import zarr

    a, b = zarr.open_group(str(got), mode="r"), zarr.open_group(str(want), mode="r")
    assert sorted(a.array_keys()) == sorted(b.array_keys())
    for name in b.array_keys():
        x, y = a[name][...], b[name][...]
        assert x.dtype == y.dtype and x.shape == y.shape, name
        if x.dtype.kind in "OTUS":
            assert x.tolist() == y.tolist(), name
        else:
            assert np.array_equal(x.view(np.uint8), y.view(np.uint8)), f"{name} differs"
    assert dict(a.attrs) == dict(b.attrs)
