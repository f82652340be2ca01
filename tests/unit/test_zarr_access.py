"""The typed accessor that narrows a zarr group member to an array."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr

from flq_audit.errors import StoreError
from flq_audit.store._writer import zarr_array


@pytest.fixture()
def group(tmp_path: Path) -> zarr.Group:
    root = zarr.open_group(str(tmp_path / "s.zarr"), mode="w")
    root.create_array("step", data=np.array([0, 10, 20]))
    root.create_group("layers")
    return root


def test_returns_the_array_with_its_data(group: zarr.Group) -> None:
    array = zarr_array(group, "step")
    assert isinstance(array, zarr.Array)
    np.testing.assert_array_equal(array[:], [0, 10, 20])


def test_a_group_is_refused_naming_the_variable(group: zarr.Group) -> None:
    with pytest.raises(StoreError, match="'layers' is a group, expected an array") as info:
        zarr_array(group, "layers")
    assert info.value.path is not None and "s.zarr" in info.value.path


def test_a_missing_variable_is_refused_naming_it(group: zarr.Group) -> None:
    with pytest.raises(StoreError, match="no variable 'gram'"):
        zarr_array(group, "gram")
