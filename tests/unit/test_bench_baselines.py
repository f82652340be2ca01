"""The hand-written baselines of benchmarks/run.py compute what they claim, on real zarr stores."""

from __future__ import annotations

import importlib
from pathlib import Path

import numpy as np
import pytest
import zarr
from zarr.codecs import BloscCodec

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture
def baselines(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    return importlib.import_module("_baselines")


def _array(group, name: str, data: np.ndarray, dims: tuple[str, ...], chunks=None, **kw):
    array = group.create_array(name, shape=data.shape, dtype=data.dtype,
                               chunks=chunks or data.shape, dimension_names=dims, **kw)
    array[...] = data
    return array


def _store(path: Path) -> None:
    """Two steps (the second not done), two layers of widths 2 and 2 (padded to 3), six
    samples of two alternating classes: layer 0 holds the centred target itself, layer 1
    two features orthogonal to it."""
    group = zarr.open_group(str(path), mode="w")
    labels = np.arange(6) % 2
    targets = np.eye(2)[labels]
    centred = targets[:, 0] - 0.5
    acts = np.full((2, 2, 6, 3), np.nan, dtype=np.float32)
    acts[0, 0, :, 0], acts[0, 0, :, 1] = centred, 1.0
    acts[0, 1, :, 0], acts[0, 1, :, 1] = [1, 1, 0, 0, 0, 0], [0, 0, 1, 1, 0, 0]
    _array(group, "done", np.array([True, False]), ("step",))
    _array(group, "width", np.array([2, 2]), ("layer",))
    _array(group, "targets", targets, ("sample", "target"))
    _array(group, "activations", acts, ("step", "layer", "sample", "feature"),
           chunks=(1, 1, 3, 3), compressors=[BloscCodec(cname="lz4", clevel=5,
                                                         shuffle="bitshuffle")])
    _array(group, "gram", np.arange(2 * 2 * 3 * 3, dtype=np.float32).reshape(2, 2, 3, 3),
           ("step", "layer", "gram_i", "gram_j"), chunks=(1, 1, 3, 3))


def test_lstsq_tl_is_one_for_the_target_zero_for_orthogonal_features(baselines, tmp_path):
    _store(tmp_path / "s.zarr")
    tl = baselines.lstsq_tl(tmp_path / "s.zarr")["tl"]
    assert tl[0] == pytest.approx([1.0, 0.0], abs=1e-12)
    assert tl[1] == [None, None]


def test_zarr_write_copies_the_step_arrays_with_their_chunks_and_codecs(baselines, tmp_path):
    _store(tmp_path / "s.zarr")
    figures = baselines.zarr_write(tmp_path / "s.zarr", tmp_path / "copy.zarr")
    source = zarr.open_group(str(tmp_path / "s.zarr"), mode="r")
    copy = zarr.open_group(str(tmp_path / "copy.zarr"), mode="r")
    assert sorted(name for name, _ in copy.arrays()) == ["activations", "gram"]
    assert figures["bytes"] == 2 * 2 * 6 * 3 * 4 + 2 * 2 * 3 * 3 * 4
    for name in ("activations", "gram"):
        np.testing.assert_array_equal(copy[name][:], source[name][:])
        assert copy[name].chunks == source[name].chunks
        assert copy[name].compressors == source[name].compressors
    assert copy["activations"].compressors[0].cname.value == "lz4"
