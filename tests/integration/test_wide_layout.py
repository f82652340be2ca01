"""Narrow layers beside a wide one: padding chunks are neither written nor read, and layers
wider than the probe get the dual form (docs/store.md#layout)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import flq_audit  # noqa: F401  (registers the accessor)
from flq_audit.metrics import gram_dataset, target_linearity_dataset
from flq_audit.store import LayerInfo, ProbeSummary, StoreLayout, create_or_resume, open_dataset
from flq_audit.store._schema import FEATURE_BLOCK

WIDTHS = (1100, 300, 520)  # 3, 1 and 2 feature blocks of 512
N = 40
CLASSES = 3


def _tl_lstsq(h: np.ndarray, y: np.ndarray) -> float:
    yc = y - y.mean(axis=0)
    fit = np.linalg.lstsq(h, yc, rcond=None)[0]
    return 1.0 - float(((yc - h @ fit) ** 2).sum()) / float((yc**2).sum())


def _chunk_keys(array_dir: Path) -> set[tuple[int, ...]]:
    root = array_dir / "c"
    return {tuple(int(p) for p in f.relative_to(root).parts) for f in root.rglob("*")
            if f.is_file()}


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    rng = np.random.default_rng(0)
    labels = np.arange(N) % CLASSES
    y = np.eye(CLASSES)[labels]
    probe = ProbeSummary("p", "f" * 64, N, "classes", y, labels, CLASSES)
    layers = tuple(LayerInfo(f"l{j}", "Linear", w, w) for j, w in enumerate(WIDTHS))
    layout = StoreLayout(source="synthetic", steps=(0, 1), labels=("a", "b"),
                         commits=("", ""), layers=layers, probe=probe, chunk_bytes=2**16)
    path = tmp_path_factory.mktemp("wide") / "s.zarr"
    acts = {}
    writer = create_or_resume(path, layout, version="test")
    try:
        for s in range(2):
            with writer.step(s) as step:
                for j, w in enumerate(WIDTHS):
                    h = (y @ rng.normal(size=(CLASSES, w)) + rng.normal(size=(N, w))
                         ).astype(np.float32)
                    acts[s, j] = h
                    for start in range(0, N, 16):  # batches across chunk boundaries
                        step.write_rows(j, start, h[start : start + 16])
                    weight = rng.normal(size=(7, w)).astype(np.float32)
                    step.write_gram(j, weight.T @ weight)
    finally:
        writer.close()
    return path, layout, acts, y


def test_narrow_layers_write_only_their_own_chunks(written):
    path, layout, _, _ = written
    assert layout.feature_chunk == layout.gram_chunk == FEATURE_BLOCK
    rows = layout.sample_chunk
    assert rows == 2**16 // (FEATURE_BLOCK * 4)  # sized for one feature block, not the widest
    blocks = [-(-w // FEATURE_BLOCK) for w in WIDTHS]
    row_chunks = -(-N // rows)
    expected_acts = {(s, j, r, f) for s in range(2) for j, b in enumerate(blocks)
                     for r in range(row_chunks) for f in range(b)}
    assert _chunk_keys(path / "activations") == expected_acts
    expected_grams = {(s, j, a, b) for s in range(2) for j, n in enumerate(blocks)
                      for a in range(n) for b in range(n)}
    assert _chunk_keys(path / "gram") == expected_grams
    assert layout.estimated_bytes() == 2 * (N * 4 * (1100 + 512 + 1024)
                                            + 4 * (1100**2 + 512**2 + 1024**2))


def test_readers_never_touch_padding_chunks(written, tmp_path):
    import shutil

    path, _, acts, y = written
    copy = tmp_path / "s.zarr"
    shutil.copytree(path, copy)
    # undecodable files where the narrow layers' padding would be: any read of one fails
    for s in range(2):
        for name, index in (("activations", (s, 1, 0, 1)), ("gram", (s, 1, 0, 1)),
                            ("gram", (s, 1, 1, 1))):
            bad = copy / name / "c" / Path(*map(str, index))
            bad.parent.mkdir(parents=True, exist_ok=True)
            bad.write_bytes(b"not a chunk")
    ds = open_dataset(copy)
    np.testing.assert_array_equal(ds.flq.activations(step=1, layer="l1").values, acts[1, 1])
    assert ds.flq.gram(step=1, layer="l1").shape == (300, 300)
    out = target_linearity_dataset(ds).compute()
    for s in range(2):
        for j in range(len(WIDTHS)):
            h = acts[s, j].astype(np.float64)
            assert float(out["target_linearity"][s, j]) == pytest.approx(_tl_lstsq(h, y),
                                                                         abs=1e-9)
    # every layer here is wider than the 40 samples: all solved in the dual form
    np.testing.assert_array_equal(out["dual"].values, 1.0)
    np.testing.assert_array_equal(out["rank"].values, N)
    spectrum = gram_dataset(ds).compute()  # reads the Grams sliced to gram_width
    assert np.isfinite(spectrum[next(iter(spectrum.data_vars))].values).all()
