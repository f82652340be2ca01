"""The store written by ``python -m flq_audit``, read back with plain xarray and checked
against values computed independently from the checkpoint files."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch
import xarray as xr
from safetensors.torch import load_file

from flq_audit.models import build_from_spec
from tests._helpers.cli import cli_env, describe, run_cli
from tests._helpers.runs import make_run

# Layer widths 5, 12, 7: narrower layers are NaN-padded to 12 features.
SPEC = {"type": "mlp", "in_features": 5, "widths": [12, 7], "out_features": 4,
        "activation": "tanh", "bias": True}
LAYERS = ["layers.0", "layers.1", "layers.2"]
WIDTHS = [5, 12, 7]
STEPS = (0, 5, 50)
N_SAMPLES = 50
# 1024-byte chunks of 12 float32 features: 21 rows, so samples split 21 + 21 + 8, and
# --batch-size 16 makes batches straddle chunk boundaries.
CHUNK_BYTES = 1024
CHUNK_ROWS = CHUNK_BYTES // (max(WIDTHS) * 4)


@pytest.fixture(scope="module")
def audited(tmp_path_factory):
    root = tmp_path_factory.mktemp("store")
    run = make_run(root / "run", STEPS, spec=SPEC, n_samples=N_SAMPLES)
    store = root / "S.zarr"
    proc = run_cli(run, "--out", store, "--batch-size", "16",
                   env=cli_env(FLQ_AUDIT_CHUNK_BYTES=str(CHUNK_BYTES)))
    assert proc.returncode == 0, describe(proc)
    return run, store


@pytest.fixture(scope="module")
def ds(audited):
    """The store opened with xarray alone: no flq_audit code on the reading path."""
    _, store = audited
    with xr.open_zarr(str(store)) as opened:
        yield opened.load()


def _probe(run):
    with np.load(run / "probe.npz") as data:
        return data["inputs"], data["targets"], int(data["num_classes"])


def _layer_inputs(run, step: int) -> list[np.ndarray]:
    """Inputs of each Linear layer, computed by hand from the checkpoint file."""
    model = build_from_spec(SPEC)
    state = load_file(str(run / f"step_{step}.safetensors"))
    model.load_state_dict(state, strict=True)
    model.eval()
    x = torch.from_numpy(_probe(run)[0])
    inputs = []
    with torch.no_grad():
        h = x.flatten(1)
        for layer in model.layers:
            inputs.append(h.numpy().copy())
            h = torch.tanh(h @ layer.weight.T + layer.bias)
    return inputs


@pytest.mark.slow
def test_plain_xarray_opens_the_store(ds):
    assert [int(s) for s in ds["step"].values] == list(STEPS)
    assert [str(x) for x in ds["layer"].values] == LAYERS
    assert ds["width"].values.tolist() == WIDTHS
    assert ds["gram_width"].values.tolist() == WIDTHS
    assert ds.sizes["sample"] == N_SAMPLES and ds.sizes["feature"] == max(WIDTHS)
    assert ds["activations"].dims == ("step", "layer", "sample", "feature")
    assert ds["activations"].dtype == np.float32
    assert ds["done"].values.tolist() == [True] * len(STEPS)
    assert [str(e) for e in ds["error"].values] == [""] * len(STEPS)


@pytest.mark.slow
@pytest.mark.parametrize("step", STEPS)
def test_activations_are_the_layer_inputs(audited, ds, step):
    run, _ = audited
    expected = _layer_inputs(run, step)
    for layer, width, want in zip(LAYERS, WIDTHS, expected, strict=True):
        got = ds["activations"].sel(step=step, layer=layer).values
        assert want.shape == (N_SAMPLES, width)
        np.testing.assert_allclose(got[:, :width], want, rtol=1e-5, atol=1e-6,
                                   err_msg=f"step {step} {layer}")
        assert np.isnan(got[:, width:]).all(), f"step {step} {layer}: padding is not NaN"


@pytest.mark.slow
@pytest.mark.parametrize("step", STEPS)
def test_gram_is_wt_w_of_the_checkpoint(audited, ds, step):
    run, _ = audited
    state = load_file(str(run / f"step_{step}.safetensors"))
    for layer, width in zip(LAYERS, WIDTHS, strict=True):
        w = state[f"{layer}.weight"].double().numpy()
        np.testing.assert_allclose(ds.flq.gram(step, layer).values, w.T @ w, rtol=1e-5,
                                   atol=1e-6)
        form = str(ds["gram_form"].sel(layer=layer).values)
        assert form == ("factor" if w.shape[0] < w.shape[1] else "dense")  # --grams compact
        if form == "dense":
            got = ds["gram"].sel(step=step, layer=layer).values
            np.testing.assert_allclose(got[:width, :width], w.T @ w, rtol=1e-5, atol=1e-6)
        else:
            got = ds["gram_factor"].sel(step=step, layer=layer).values
            np.testing.assert_array_equal(got[: w.shape[0], :width], w)  # W itself, float32
        rows = got.shape[0] if form == "dense" else w.shape[0]
        assert np.isnan(got[rows:, :]).all() and np.isnan(got[:, width:]).all()


@pytest.mark.slow
def test_targets_are_one_hot_with_num_classes_columns(audited, ds):
    run, _ = audited
    _, labels, num_classes = _probe(run)
    targets = ds["targets"].values
    assert targets.shape == (N_SAMPLES, num_classes)
    assert set(np.unique(targets)) <= {0.0, 1.0}
    np.testing.assert_array_equal(targets.sum(axis=1), 1.0)
    np.testing.assert_array_equal(targets.argmax(axis=1), labels)
    np.testing.assert_array_equal(ds["class_label"].values, labels)


@pytest.mark.slow
def test_labels_files_and_sha256_are_recorded(audited, ds):
    run, _ = audited
    for i, step in enumerate(STEPS):
        name = f"step_{step}.safetensors"
        assert str(ds["label"].values[i]) == name
        assert json.loads(str(ds["files"].values[i])) == [name]
        digest = hashlib.sha256((run / name).read_bytes()).hexdigest()
        assert json.loads(str(ds["sha256"].values[i])) == [digest]
    provenance = json.loads(ds.attrs["checkpoints"])
    assert sorted(provenance, key=int) == [str(s) for s in STEPS]
    assert provenance["5"]["files"] == ["step_5.safetensors"]


@pytest.mark.slow
def test_activation_chunks_are_one_step_one_layer_a_block_of_rows(audited):
    _, store = audited
    with xr.open_zarr(str(store)) as lazy:
        acts = lazy["activations"]
        assert acts.encoding["chunks"] == (1, 1, CHUNK_ROWS, max(WIDTHS))
        assert acts.data.chunks == (
            (1,) * len(STEPS), (1,) * len(LAYERS), (21, 21, 8), (max(WIDTHS),))
        assert lazy["gram"].encoding["chunks"] == (1, 1, max(WIDTHS), max(WIDTHS))
