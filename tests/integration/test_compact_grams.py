"""``--grams compact|full|spectrum|none``: what each keeps, and every Gram metric from it.

The same checkpoints are audited with each form; the dense (``full``) store is the
reference. Every Gram-derived metric of a ``compact`` store equals the dense computation
within 1e-12 relative (float64 Grams and activations)."""

from __future__ import annotations

import numpy as np
import pytest
from safetensors.torch import load_file

from flq_audit import api
from flq_audit.errors import MetricError
from flq_audit.options import CaptureOptions
from tests._helpers.runs import make_run

#: Layers 0 (16 × 6: dense) and 1 (4 × 16) and layers.2 (3 × 4: factor forms).
MLP = {"type": "mlp", "in_features": 6, "widths": [16, 4], "out_features": 3,
       "activation": "gelu", "bias": True}
#: Convolutions: 16 × (1·3·3) keeps its dense Gram, 4 × (16·3·3) its factor.
CNN = {"type": "cnn", "in_channels": 1, "input_size": [6, 6], "channels": [16, 4],
       "kernel_sizes": [3, 3], "padding": [1, 1], "pool_after": [], "activation": "relu",
       "num_classes": 3, "bias": True}
GRAM_METRICS = ["gram", "surrogate"]


def _capture(grams: str) -> CaptureOptions:
    return CaptureOptions(grams=grams, gram_dtype="float64", activation_dtype="float64")


def _audit(run, tmp_path, grams: str, name: str | None = None):
    out = tmp_path / f"{name or grams}.zarr"
    api.audit(str(run), out=out, capture=_capture(grams))
    return out


@pytest.fixture(scope="module")
def mlp_run(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("mlp") / "run", steps=(0, 10, 20), spec=MLP)


@pytest.fixture(scope="module")
def mlp_stores(mlp_run, tmp_path_factory):
    root = tmp_path_factory.mktemp("stores")
    return {grams: _audit(mlp_run, root, grams) for grams in ("full", "compact", "spectrum",
                                                               "none")}


def _assert_metrics_equal(got, want, names):
    for name in names:
        a, b = np.asarray(got[name].values), np.asarray(want[name].values)
        assert a.shape == b.shape, name
        assert np.isfinite(b).any(), name
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12 * np.nanmax(np.abs(b)),
                                   err_msg=name)


def test_compact_keeps_the_factor_of_wide_layers_and_the_gram_of_tall_ones(mlp_stores):
    ds = api.open_store(mlp_stores["compact"])
    forms = dict(zip(ds["layer"].values.tolist(), ds["gram_form"].values.tolist(),
                     strict=True))
    assert forms == {"layers.0": "dense", "layers.1": "factor", "layers.2": "factor"}
    assert ds["gram_rows"].values.tolist() == [16, 4, 3]
    assert ds["gram_factor"].dims == ("step", "layer", "factor_row", "gram_j")
    assert ds["gram_factor"].sizes["factor_row"] == 4  # the most rows of a factor layer
    full = api.open_store(mlp_stores["full"])
    assert "gram_factor" not in full and set(full["gram_form"].values.tolist()) == {"dense"}


def test_accessor_gram_is_wt_w_of_the_checkpoint_in_every_form(mlp_run, mlp_stores):
    compact, full = (api.open_store(mlp_stores[g]) for g in ("compact", "full"))
    for step in (0, 10, 20):
        state = load_file(str(mlp_run / f"step_{step}.safetensors"))
        for layer in ("layers.0", "layers.1", "layers.2"):
            w = state[f"{layer}.weight"].double().numpy()
            expected = w.T @ w
            got = compact.flq.gram(step, layer)
            assert got.dims == ("gram_i", "gram_j")
            np.testing.assert_allclose(got.values, expected, rtol=1e-13, atol=1e-15)
            np.testing.assert_allclose(full.flq.gram(step, layer).values, expected,
                                       rtol=1e-13, atol=1e-15)


def test_gram_metrics_of_a_compact_store_equal_the_dense_ones(mlp_stores):
    full = api.compute_metrics(mlp_stores["full"], metrics=GRAM_METRICS)
    compact = api.compute_metrics(mlp_stores["compact"], metrics=GRAM_METRICS)
    names = ["gram_top_eigenvalues", "gram_effective_rank", "gram_stable_rank", "gram_drift",
             "gram_cosine_to_final", "surrogate", "norm", "alignment"]
    _assert_metrics_equal(compact, full, names)


def test_gram_metrics_match_an_independent_computation(mlp_run, mlp_stores):
    """Drift and cosine of the last layer's Grams from the checkpoints themselves."""
    compact = api.compute_metrics(mlp_stores["compact"], metrics=["gram"])
    grams = []
    for step in (0, 10, 20):
        w = load_file(str(mlp_run / f"step_{step}.safetensors"))["layers.2.weight"]
        grams.append(w.double().numpy().T @ w.double().numpy())
    drift = np.linalg.norm(grams[2] - grams[1]) / np.linalg.norm(grams[1])
    cosine = (grams[0] * grams[2]).sum() / (np.linalg.norm(grams[0]) * np.linalg.norm(grams[2]))
    layer = {"layer": "layers.2"}
    np.testing.assert_allclose(compact["gram_drift"].sel(step=20, **layer), drift, rtol=1e-12)
    np.testing.assert_allclose(compact["gram_cosine_to_final"].sel(step=0, **layer), cosine,
                               rtol=1e-12)
    top = np.linalg.eigvalsh(grams[1])[::-1][:3]
    np.testing.assert_allclose(
        compact["gram_top_eigenvalues"].sel(step=10, **layer).values[:3], top, rtol=1e-12)


def test_spectrum_store_keeps_eigenvalues_and_computes_the_spectral_metrics(mlp_stores):
    ds = api.open_store(mlp_stores["spectrum"])
    assert "gram" not in ds and "gram_factor" not in ds and "gram_eigenvalues" in ds
    with pytest.warns(UserWarning, match="--grams compact"):
        spectral = api.compute_metrics(mlp_stores["spectrum"], metrics=["gram"])
    full = api.compute_metrics(mlp_stores["full"], metrics=["gram"])
    _assert_metrics_equal(spectral, full, ["gram_top_eigenvalues", "gram_effective_rank",
                                           "gram_stable_rank"])
    assert np.isnan(spectral["gram_drift"].values).all()
    with pytest.raises(MetricError, match="--grams compact"):
        api.compute_metrics(mlp_stores["spectrum"], metrics=["surrogate"])
    with pytest.raises(KeyError, match="--grams spectrum"):
        ds.flq.gram(0, "layers.0")


def test_none_store_keeps_activations_only(mlp_stores):
    ds = api.open_store(mlp_stores["none"])
    assert not {"gram", "gram_factor", "gram_eigenvalues"} & set(ds.data_vars)
    assert set(ds["gram_form"].values.tolist()) == {"none"}
    tl = api.compute_metrics(mlp_stores["none"], metrics=["tl"])
    assert np.isfinite(tl["target_linearity"].values).all()
    for group in ("gram", "surrogate"):
        with pytest.raises(MetricError, match="--grams compact"):
            api.compute_metrics(mlp_stores["none"], metrics=[group])


def test_compact_grams_take_fewer_values_than_full_ones(mlp_stores):
    """Per step: 6² + 16² + 4² = 308 Gram values (full) against 6² + 4·16 + 3·4 = 112
    values of WᵀW and W (compact); the chunks written hold at least that."""
    def written_values(store, name):
        ds = api.open_store(store)
        if name not in ds:
            return 0
        values = np.asarray(ds[name].values)
        return int(np.isfinite(values).sum())

    full = written_values(mlp_stores["full"], "gram")
    compact = (written_values(mlp_stores["compact"], "gram")
               + written_values(mlp_stores["compact"], "gram_factor"))
    assert full == 3 * 308 and compact == 3 * 112


def test_conv_layers_compact_equals_full(tmp_path):
    run = make_run(tmp_path / "cnn", steps=(0, 10), spec=CNN, n_samples=24)
    inputs = np.random.default_rng(0).normal(size=(24, 1, 6, 6)).astype(np.float32)
    targets = np.random.default_rng(1).integers(0, 3, 24)
    np.savez(run / "probe.npz", inputs=inputs, targets=targets, num_classes=np.int64(3))
    stores = {g: _audit(run, tmp_path, g) for g in ("full", "compact")}
    compact = api.open_store(stores["compact"])
    forms = dict(zip(compact["layer"].values.tolist(), compact["gram_form"].values.tolist(),
                     strict=True))
    assert forms["features.0"] == "dense" and forms["features.2"] == "factor"
    full = api.compute_metrics(stores["full"], metrics=["gram"])
    got = api.compute_metrics(stores["compact"], metrics=["gram"])
    _assert_metrics_equal(got, full, ["gram_top_eigenvalues", "gram_effective_rank",
                                      "gram_stable_rank", "gram_drift",
                                      "gram_cosine_to_final"])


#: A layer of 4 × 4096: its dense Gram in float64 is 128 MiB, its factor 128 KiB.
WIDE = {"type": "mlp", "in_features": 4096, "widths": [4], "out_features": 3,
        "activation": "gelu", "bias": True}
#: Far below one dense Gram of the wide layer (and above what its factor needs).
TRACED_BOUND = 48 * 2**20


def _traced_peak(func) -> int:
    import tracemalloc

    tracemalloc.start()
    try:
        func()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("grams", ["compact", pytest.param("full", id="dense")])
def test_factor_layers_never_form_the_dense_gram(tmp_path, grams):
    """The audit and the ``gram`` group of a 4 × 4096 layer stay far below one dense Gram
    (NumPy allocations, traced); the same with --grams full goes above it. (The surrogate
    reads the layer's input moments, d_in × d_in by nature: not measured here.)"""
    run = make_run(tmp_path / "wide", steps=(0, 10), spec=WIDE, n_samples=8)
    out = tmp_path / "wide.zarr"
    audit_peak = _traced_peak(lambda: api.audit(str(run), out=out, capture=_capture(grams)))
    metrics_peak = _traced_peak(lambda: api.compute_metrics(out, metrics=["gram"],
                                                            scheduler="sync"))
    if grams == "compact":
        assert audit_peak < TRACED_BOUND and metrics_peak < TRACED_BOUND, (audit_peak,
                                                                            metrics_peak)
    else:  # the bound is one that a dense Gram breaks
        assert max(audit_peak, metrics_peak) > TRACED_BOUND


def _as_written_before_grams(store):
    """Strip ``gram_form`` and ``gram_rows`` as a store written before ``--grams`` lacks them."""
    import zarr

    from flq_audit.store import consolidate
    from flq_audit.store._schema import fixed_width_strings_allowed

    with fixed_width_strings_allowed():
        group = zarr.open_group(str(store), mode="r+", zarr_format=3)
        for name in ("gram_form", "gram_rows"):
            del group[name]
        for name in group.array_keys():
            array = group[name]
            coords = str(array.attrs.get("coordinates", ""))
            if coords:
                kept = [c for c in coords.split() if c not in ("gram_form", "gram_rows")]
                array.attrs["coordinates"] = " ".join(kept)
    consolidate(store)


def test_a_store_of_dense_grams_without_gram_form_reads_computes_and_grows(tmp_path):
    """A store written before --grams (dense Grams, no gram_form) reads as all dense,
    computes the Gram metrics of a fresh dense store, and takes more steps as dense Grams."""
    run = make_run(tmp_path / "run", steps=(0, 10, 20), spec=MLP)
    old, fresh = tmp_path / "old.zarr", tmp_path / "fresh.zarr"
    api.audit(str(run), steps="0,10", out=old, capture=_capture("full"))
    _as_written_before_grams(old)
    ds = api.open_store(old)
    assert "gram_form" not in ds.coords and ds.flq.gram_form("layers.1") == "dense"
    api.audit(str(run), steps="all", out=old, capture=_capture("full"))  # resumes, dense
    api.audit(str(run), out=fresh, capture=_capture("full"))
    got = api.compute_metrics(old, metrics=GRAM_METRICS)
    want = api.compute_metrics(fresh, metrics=GRAM_METRICS)
    _assert_metrics_equal(got, want, ["gram_top_eigenvalues", "gram_drift", "surrogate",
                                      "alignment"])
    w = load_file(str(run / "step_20.safetensors"))["layers.1.weight"].double().numpy()
    np.testing.assert_allclose(api.open_store(old).flq.gram(20, "layers.1").values, w.T @ w,
                               rtol=1e-13, atol=1e-15)


@pytest.mark.slow
def test_tiny_gpt_neox_compact_gram_metrics_equal_full(tmp_path):
    from flq_audit.options import TextProbeOptions
    from tests._helpers.hf_models import trainer_run

    run = trainer_run(tmp_path / "run", "neox")
    stores = {}
    for grams in ("full", "compact"):
        stores[grams] = tmp_path / f"{grams}.zarr"
        api.audit(str(run), probe=str(run / "probe.jsonl"), out=stores[grams],
                  text=TextProbeOptions(pooling="mean"), capture=_capture(grams))
    forms = set(api.open_store(stores["compact"])["gram_form"].values.tolist())
    assert forms == {"dense", "factor"}  # the MLP down projections (32 × 64) are factors
    full = api.compute_metrics(stores["full"], metrics=GRAM_METRICS)
    compact = api.compute_metrics(stores["compact"], metrics=GRAM_METRICS)
    _assert_metrics_equal(compact, full, ["gram_top_eigenvalues", "gram_effective_rank",
                                          "gram_stable_rank", "gram_drift",
                                          "gram_cosine_to_final", "surrogate", "norm",
                                          "alignment"])


def test_weights_only_with_grams_none_is_refused_before_anything_is_written(mlp_run, tmp_path):
    from flq_audit.errors import OptionError

    out = tmp_path / "w.zarr"
    with pytest.raises(OptionError, match="--grams compact, full or spectrum"):
        api.audit(str(mlp_run), weights_only=True, out=out, capture=_capture("none"))
    assert not out.exists()
