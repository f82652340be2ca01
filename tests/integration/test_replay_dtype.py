"""``--dtype``: the replay runs in half precision, Grams stay the checkpoint's own (float64)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr
from safetensors import safe_open

from flq_audit import api
from flq_audit.errors import StoreMismatchError
from flq_audit.options import CaptureOptions, TextProbeOptions
from tests._helpers.runs import make_run

#: bfloat16 keeps 8 significant bits: a unit roundoff of 2**-8.
BF16_ROUNDOFF = 2.0**-8
#: The fidelity bound. A bfloat16 replay changes a layer's features H by a relative amount
#: ε = ‖ΔH‖/‖H‖ of a few units of roundoff (its weights and every intermediate result are
#: rounded). TL = ‖P Y‖²/‖Y‖² (P the projection onto H's columns) moves, to first order, by at
#: most 2‖ΔP‖, and ‖ΔP‖ is ε amplified by the conditioning of the fit; with 96 probe rows for
#: 32 to 64 features the fixture's fits amplify ε about 3.5 times. So |ΔTL| ≤ 10 ε per layer
#: and step, and ε ≤ 4 units of roundoff.
TL_PER_FEATURE_ERROR = 10.0
FEATURE_ERROR = 4 * BF16_ROUNDOFF
WORDS = sorted({w for text in ("the cat sat on the mat", "a dog ran in the park today",
                               "birds fly high", "the sun is hot", "rain falls down on the town",
                               "snow is cold and white", "fish swim", "the wind blows hard tonight")
                for w in text.split()})
ANIMALS = {"cat", "dog", "birds", "fish"}


def _neox_run(root: Path, n_texts: int = 96) -> Path:
    """The tiny GPT-NeoX run (float32 checkpoints 0 and 10) with a probe of ``n_texts``
    random sentences, more than the layers are wide (TL below 1)."""
    pytest.importorskip("transformers")
    from tests._helpers.hf_models import trainer_run

    run = trainer_run(root, "neox")
    rng = np.random.default_rng(0)
    with open(run / "probe.jsonl", "w") as handle:
        for _ in range(n_texts):
            text = " ".join(rng.choice(WORDS, size=int(rng.integers(3, 8))))
            label = "animal" if ANIMALS & set(text.split()) else "weather"
            handle.write(json.dumps({"text": text, "label": label}) + "\n")
    return run


def _audit(run: Path, store: Path, dtype: str | None, steps: str = "all", **capture: str):
    return api.audit(str(run), probe=str(run / "probe.jsonl"), out=store, steps=steps,
                     text=TextProbeOptions(pooling="mean"),
                     capture=CaptureOptions(replay_dtype=dtype, **capture))


def _config(store: Path) -> dict:
    with xr.open_zarr(store) as ds:
        return json.loads(ds.attrs["capture_config"])


def _file_gram(folder: Path, key: str) -> np.ndarray:
    """WᵀW in float64 of the tensor ``key`` as the checkpoint file holds it."""
    with safe_open(str(folder / "model.safetensors"), framework="pt") as handle:
        w = handle.get_tensor(key).double().numpy()
    return w.T @ w


def _grams(store: Path) -> dict[tuple[int, str], np.ndarray]:
    """Every stored WᵀW, whatever form the store keeps it in."""
    with xr.open_zarr(store) as ds:
        return {(int(s), str(layer)): ds.flq.gram(int(s), str(layer)).values
                for s in ds.step.values for layer in ds.layer.values}


def _assert_same_grams(a: Path, b: Path) -> None:
    grams_a, grams_b = _grams(a), _grams(b)
    assert grams_a.keys() == grams_b.keys()
    for key, gram in grams_b.items():
        np.testing.assert_array_equal(grams_a[key], gram, err_msg=str(key))


def _tl_and_grams(store: Path) -> tuple[np.ndarray, dict[tuple[int, str], np.ndarray]]:
    api.compute_metrics(store, metrics=["tl"])
    with xr.open_zarr(store) as ds:
        tl = ds.flq.metric("target_linearity").values
    return tl, _grams(store)


def test_bfloat16_replay_keeps_the_checkpoints_grams_and_tl_within_the_bound(tmp_path):
    run = _neox_run(tmp_path / "run")
    stores = {dtype: tmp_path / f"{dtype}.zarr" for dtype in ("bfloat16", "float32")}
    for dtype, store in stores.items():
        result = _audit(run, store, dtype, gram_dtype="float64")
        assert result.written == [0, 10] and not result.failed
    assert _config(stores["bfloat16"])["replay_dtype"] == "bfloat16"
    assert "replay_dtype" not in _config(stores["float32"])  # the legacy replay: not recorded
    (tl16, grams16), (tl32, grams32) = (_tl_and_grams(stores[d]) for d in ("bfloat16", "float32"))
    for (step, layer), gram in grams32.items():
        np.testing.assert_allclose(grams16[step, layer], gram, rtol=1e-12, atol=0,
                                   err_msg=f"{layer} at step {step}")
    key = "gpt_neox.layers.1.mlp.dense_4h_to_h.weight"  # and both are the file's own
    np.testing.assert_allclose(grams16[10, key.removesuffix(".weight")],
                               _file_gram(run / "checkpoint-10", key), rtol=1e-12, atol=1e-12)
    with xr.open_zarr(stores["bfloat16"]) as b16, xr.open_zarr(stores["float32"]) as f32:
        assert b16.activations.dtype == np.float32
        h16, h32 = (np.nan_to_num(ds.activations.values.astype(np.float64)) for ds in (b16, f32))
    error = np.sqrt(((h16 - h32) ** 2).sum(axis=(2, 3)) / (h32**2).sum(axis=(2, 3)))
    assert np.all(tl32 < 1 - 1e-3)  # more probe rows than features: TL is not 1
    delta = np.abs(tl16 - tl32)
    print(f"bfloat16 vs float32 replay: max |ΔTL| {delta.max():.3e}, relative feature change "
          f"{error.min():.2e}..{error.max():.2e}, max |ΔTL|/ε {(delta / error).max():.2f}")
    assert 0 < error.max() <= FEATURE_ERROR and delta.max() > 0
    assert np.all(delta <= TL_PER_FEATURE_ERROR * error)


def test_appending_with_another_replay_dtype_is_refused(tmp_path):
    run = _neox_run(tmp_path / "run", n_texts=12)
    store = tmp_path / "s.zarr"
    assert _audit(run, store, "bfloat16", steps="0").written == [0]
    before = sorted((p.relative_to(store), p.stat().st_mtime_ns) for p in store.rglob("*"))
    for other in (None, "float32"):
        with pytest.raises(StoreMismatchError, match=r"replay_dtype: stored \"bfloat16\", now null"):
            _audit(run, store, other, steps="10")
    assert sorted((p.relative_to(store), p.stat().st_mtime_ns) for p in store.rglob("*")) == before
    assert _audit(run, store, "bfloat16", steps="10").written == [10]


def test_a_store_without_dtype_resumes_with_the_legacy_dtype_named(tmp_path):
    run = make_run(tmp_path / "run", steps=(0, 10))
    store = tmp_path / "s.zarr"
    api.audit(str(run), out=store, steps="0")
    assert api.audit(str(run), out=store, steps="10",
                     capture=CaptureOptions(replay_dtype="float32")).written == [10]
    with pytest.raises(StoreMismatchError, match="replay_dtype"):
        api.audit(str(run), out=store, capture=CaptureOptions(replay_dtype="float16"))


@pytest.mark.parametrize("activation_dtype", ["float32", "float16"])
def test_module_model_half_replay_writes_the_store_dtype_and_exact_grams(tmp_path,
                                                                         activation_dtype):
    run = make_run(tmp_path / "run", steps=(0, 10), n_samples=64)
    stores = {dtype: tmp_path / f"{dtype}.zarr" for dtype in ("bfloat16", "float32")}
    for dtype, store in stores.items():
        assert api.audit(str(run), out=store, capture=CaptureOptions(
            replay_dtype=dtype, activation_dtype=activation_dtype)).written == [0, 10]
    assert _config(stores["bfloat16"])["replay_dtype"] == "bfloat16"
    _assert_same_grams(stores["bfloat16"], stores["float32"])
    with xr.open_zarr(stores["bfloat16"]) as b16, xr.open_zarr(stores["float32"]) as f32:
        assert b16.activations.dtype == np.dtype(activation_dtype)
        a, b = b16.activations.values, f32.activations.values
        assert np.nanmax(np.abs(a - b)) > 0
        np.testing.assert_allclose(a, b, rtol=0.05, atol=0.05)


def test_a_bfloat16_checkpoint_replays_in_bfloat16_by_default(tmp_path):
    pytest.importorskip("transformers")
    from tests._helpers.hf_models import model_for, tokenizer, trainer_run

    run = trainer_run(tmp_path / "run", "neox", steps=(0,))
    model_for("neox", tokenizer().vocab_size, seed=0).to(torch.bfloat16).save_pretrained(
        run / "checkpoint-0")
    store = tmp_path / "s.zarr"
    assert _audit(run, store, None).written == [0]
    assert _config(store)["replay_dtype"] == "bfloat16"  # config.json says bfloat16
    key = "gpt_neox.layers.0.mlp.dense_h_to_4h.weight"
    with xr.open_zarr(store) as ds:
        stored = ds.flq.gram(0, key.removesuffix(".weight")).values
    np.testing.assert_allclose(stored, _file_gram(run / "checkpoint-0", key).astype(np.float32),
                               rtol=1e-6)


def test_float64_activations_refuse_a_half_replay(tmp_path):
    from flq_audit.errors import OptionError

    run = make_run(tmp_path / "run", steps=(0,))
    with pytest.raises(OptionError, match="--dtype bfloat16 contradicts --activation-dtype"):
        api.audit(str(run), out=tmp_path / "s.zarr", capture=CaptureOptions(
            replay_dtype="bfloat16", activation_dtype="float64"))
    assert not (tmp_path / "s.zarr").exists()


@pytest.mark.gpu
def test_bfloat16_replay_on_cuda_keeps_the_grams(tmp_path):
    run = make_run(tmp_path / "run", steps=(0, 10), n_samples=64)
    stores = {device: tmp_path / f"{device}.zarr" for device in ("cpu", "cuda")}
    for device, store in stores.items():
        dtype = "bfloat16" if device == "cuda" else "float32"
        assert api.audit(str(run), out=store, device=device,
                         capture=CaptureOptions(replay_dtype=dtype)).written == [0, 10]
    _assert_same_grams(stores["cuda"], stores["cpu"])
    with xr.open_zarr(stores["cuda"]) as cuda, xr.open_zarr(stores["cpu"]) as cpu:
        assert cuda.activations.dtype == np.float32
        np.testing.assert_allclose(cuda.activations.values, cpu.activations.values,
                                   rtol=0.05, atol=0.05)


def test_the_cli_replays_in_dtype_and_refuses_another_one_into_the_store(tmp_path):
    from tests._helpers.cli import assert_says, describe, invoke

    run = make_run(tmp_path / "run", steps=(0, 10))
    store = tmp_path / "s.zarr"
    first = invoke("audit", run, "--out", store, "--steps", "0", "--dtype", "bfloat16")
    assert first.exit_code == 0, describe(first)
    assert _config(store)["replay_dtype"] == "bfloat16"
    refused = invoke("audit", run, "--out", store, "--steps", "10", "--dtype", "float16")
    assert refused.exit_code == StoreMismatchError.exit_code, describe(refused)
    assert_says(refused.output, 'capture_config.replay_dtype: stored "bfloat16", now "float16"')
    with xr.open_zarr(store) as ds:
        assert ds["done"].values.tolist() == [True, False]


def test_a_tied_unembedding_takes_its_gram_from_the_embedding_tensor(tmp_path):
    pytest.importorskip("transformers")
    from tests._helpers.hf_models import trainer_run

    run = trainer_run(tmp_path / "run", "gpt2", steps=(0,))  # lm_head is tied to wte
    for dtype in ("bfloat16", "float32"):
        assert _audit(run, tmp_path / f"{dtype}.zarr", dtype, gram_dtype="float64").written == [0]
    _assert_same_grams(tmp_path / "bfloat16.zarr", tmp_path / "float32.zarr")
    np.testing.assert_allclose(  # the file holds the tied weight once, as wte
        _grams(tmp_path / "bfloat16.zarr")[0, "lm_head"],
        _file_gram(run / "checkpoint-0", "transformer.wte.weight"), rtol=1e-12, atol=1e-12)
