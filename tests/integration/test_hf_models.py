"""transformers checkpoints and text probes, checked against direct transformers forwards."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import xarray as xr

pytest.importorskip("transformers")

from flq_audit import api
from flq_audit.errors import ModelBuildError
from flq_audit.models.hf import load_hf_checkpoint
from flq_audit.options import CaptureOptions, TextProbeOptions
from tests._helpers.hf_models import LABELS, TEXTS, trainer_run


def _width(ds: xr.Dataset, layer: str) -> int:
    return int(ds.width.sel(layer=layer))


def test_neox_mean_pooling_matches_unpadded_forwards(tmp_path):
    run = trainer_run(tmp_path / "run", "neox")
    api.audit(str(run), probe=str(run / "probe.jsonl"), text=TextProbeOptions(pooling="mean"),
              out=tmp_path / "s.zarr")
    ds = xr.open_zarr(tmp_path / "s.zarr")
    assert ds.sizes["sample"] == len(TEXTS)
    assert ds.targets.shape == (len(TEXTS), 2)  # classes = distinct labels
    built = load_hf_checkpoint(run / "checkpoint-10", step=10)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(run / "checkpoint-10")
    stored = ds.activations.sel(step=10, layer="lm_head").values[:, : _width(ds, "lm_head")]
    for i, text in enumerate(TEXTS):  # each text alone: no padding at all
        ids = tok(text, return_tensors="pt")
        with torch.no_grad():
            hidden = built.module(**ids, output_hidden_states=True).hidden_states[-1]
        np.testing.assert_allclose(stored[i], hidden[0].mean(0).numpy(), rtol=1e-4, atol=1e-5)


def test_gpt2_conv1d_gram_lives_in_input_space(tmp_path):
    run = trainer_run(tmp_path / "run", "gpt2", steps=(0,))
    api.audit(str(run), probe=str(run / "probe.jsonl"), text=TextProbeOptions(pooling="last"),
              capture=CaptureOptions(layers=("transformer.h.0.attn.c_attn",)),
              out=tmp_path / "s.zarr")
    ds = xr.open_zarr(tmp_path / "s.zarr")
    assert int(ds.gram_width.sel(layer="transformer.h.0.attn.c_attn")) == 32  # not 96
    built = load_hf_checkpoint(run / "checkpoint-0", step=0)
    w = built.module.transformer.h[0].attn.c_attn.weight.detach().double()  # (in=32, out=96)
    gram = ds.gram.sel(step=0, layer="transformer.h.0.attn.c_attn").values
    np.testing.assert_allclose(gram, (w @ w.T).numpy(), rtol=1e-5, atol=1e-6)


def test_bert_token_task_one_row_per_word(tmp_path):
    run = trainer_run(tmp_path / "run", "bert", steps=(0,))
    api.audit(str(run), probe=str(run / "probe.jsonl"), out=tmp_path / "s.zarr",
              text=TextProbeOptions(task="token", text_column="tokens", label_column="tags"))
    ds = xr.open_zarr(tmp_path / "s.zarr")
    assert ds.sizes["sample"] == sum(len(t.split()) for t in TEXTS)
    assert ds.targets.shape[1] == len({label[0] for label in LABELS})


def test_next_token_targets(tmp_path):
    run = trainer_run(tmp_path / "run", "neox", steps=(0,))
    api.audit(str(run), probe=str(run / "probe.jsonl"),
              text=TextProbeOptions(task="next-token", top_k=5), out=tmp_path / "s.zarr")
    ds = xr.open_zarr(tmp_path / "s.zarr")
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(run / "checkpoint-0")
    positions = sum(len(tok(t)["input_ids"]) - 1 for t in TEXTS)
    assert ds.sizes["sample"] == positions
    assert ds.targets.shape[1] == 6  # top 5 + other
    assert np.allclose(ds.targets.values.sum(1), 1.0)


def test_checkpoint_that_does_not_fit_its_config_is_refused(tmp_path):
    run = trainer_run(tmp_path / "run", "neox", steps=(0,))
    config = (run / "checkpoint-0" / "config.json")
    config.write_text(config.read_text().replace('"intermediate_size": 64', '"intermediate_size": 48'))
    with pytest.raises(ModelBuildError, match=r"does not fit|mismatch|size"):
        load_hf_checkpoint(run / "checkpoint-0", step=0)


def test_weights_only_audit_needs_no_model_or_probe(tmp_path):
    from safetensors.torch import load_file

    run = trainer_run(tmp_path / "run", "gpt2", steps=(0, 10))
    api.audit(str(run), weights_only=True, out=tmp_path / "w.zarr")
    ds = xr.open_zarr(tmp_path / "w.zarr")
    assert "activations" not in ds and bool(ds.done.all())
    layer = "transformer.h.1.mlp.c_fc"
    tensors = load_file(run / "checkpoint-10" / "model.safetensors")
    w = tensors[f"{layer}.weight"].double()  # Conv1D: (d_in=32, d_out=128)
    assert int(ds.gram_width.sel(layer=layer)) == 32
    stored = ds.gram.sel(step=10, layer=layer).values
    np.testing.assert_allclose(stored[:32, :32], (w @ w.T).numpy(), rtol=1e-5, atol=1e-6)
    assert np.isnan(stored[32:]).all()  # NaN padding up to the widest layer
    assert not any("wte" in str(name) or "ln_" in str(name) for name in ds.layer.values)
    gram = api.compute_metrics(tmp_path / "w.zarr", metrics=["gram"])
    assert np.isfinite(gram.gram_effective_rank.values).all()
    from flq_audit.errors import MetricError

    with pytest.raises(MetricError, match="Grams only"):
        api.compute_metrics(tmp_path / "w.zarr", metrics=["tl"])
    exported = xr.open_dataset(api.export(tmp_path / "w.zarr", tmp_path / "w.nc"),
                               engine="h5netcdf")
    assert "gram_effective_rank" in exported and "targets" not in exported


def test_residual_stream_capture(tmp_path):
    run = trainer_run(tmp_path / "run", "neox", steps=(0,))
    api.audit(str(run), probe=str(run / "probe.jsonl"), text=TextProbeOptions(pooling="mean"),
              capture=CaptureOptions(layers=("lm_head",), hidden_states=True),
              out=tmp_path / "s.zarr")
    ds = xr.open_zarr(tmp_path / "s.zarr")
    names = [str(n) for n in ds.layer.values]
    assert names == ["lm_head", "hidden_states.0", "hidden_states.1", "hidden_states.2"]
    assert str(ds.layer_kind.sel(layer="hidden_states.1").values) == "HiddenState"
    last = ds.activations.sel(step=0, layer="hidden_states.2").values[:, :32]
    head = ds.activations.sel(step=0, layer="lm_head").values[:, :32]
    np.testing.assert_allclose(last, head, rtol=1e-6, atol=1e-6)  # lm_head reads the last state
    assert np.isnan(ds.gram.sel(step=0, layer="hidden_states.0").values).all()
    built = load_hf_checkpoint(run / "checkpoint-0", step=0)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(run / "checkpoint-0")
    ids = tok(TEXTS[0], return_tensors="pt")
    with torch.no_grad():
        states = built.module(**ids, output_hidden_states=True).hidden_states
    np.testing.assert_allclose(ds.activations.sel(step=0, layer="hidden_states.1").values[0, :32],
                               states[1][0].mean(0).numpy(), rtol=1e-4, atol=1e-5)


def test_an_audit_leaves_transformers_logging_and_progress_bars_as_the_caller_had_them(tmp_path):
    from transformers.utils import logging

    run = trainer_run(tmp_path / "run", "neox", steps=(0,))
    before = logging.get_verbosity(), logging.is_progress_bar_enabled()
    logging.set_verbosity_info()
    logging.enable_progress_bar()
    try:
        api.plan_audit(str(run), probe=str(run / "probe.jsonl"), out=tmp_path / "p.zarr")
        assert (logging.get_verbosity(), logging.is_progress_bar_enabled()) == (logging.INFO, True)
        api.audit(str(run), probe=str(run / "probe.jsonl"), out=tmp_path / "s.zarr")
        assert (logging.get_verbosity(), logging.is_progress_bar_enabled()) == (logging.INFO, True)
    finally:
        logging.set_verbosity(before[0])
        (logging.enable_progress_bar if before[1] else logging.disable_progress_bar)()


@pytest.mark.parametrize(("family", "expected", "position", "layer"), [
    ("gpt2", "last", -1, "lm_head"), ("neox", "last", -1, "lm_head"),
    ("bert", "cls", 0, "encoder.layer.1.attention.self.query")])
def test_default_pooling_follows_the_model_and_is_recorded(
    tmp_path, family, expected, position, layer,
):
    """Without --pooling a causal LM pools its last real token, an encoder its first; the
    plan and the store say which, and the stored rows are that token's (a direct forward
    of each text alone, no padding)."""
    import json

    run = trainer_run(tmp_path / "run", family, steps=(0,))
    probe = str(run / "probe.jsonl")
    summary = api.plan_audit(str(run), probe=probe, out=tmp_path / "s.zarr").summary()["probe"]
    assert summary["pooling"] == expected, summary
    assert ("causal LM (" in summary["pooling_from"]) == (expected == "last"), summary
    api.audit(str(run), probe=probe, out=tmp_path / "s.zarr")
    ds = xr.open_zarr(tmp_path / "s.zarr")
    assert json.loads(ds.attrs["capture_config"])["text"]["pooling"] == expected
    stored = ds.activations.sel(step=0, layer=layer).values[:, : _width(ds, layer)]
    built = load_hf_checkpoint(run / "checkpoint-0", step=0)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(run / "checkpoint-0")
    seen: list[torch.Tensor] = []
    built.module.get_submodule(layer).register_forward_hook(lambda m, i, o: seen.append(i[0]))
    for i, text in enumerate(TEXTS):
        with torch.no_grad():
            built.module(**tok(text, return_tensors="pt"))
        np.testing.assert_allclose(stored[i], seen[-1][0, position].numpy(), rtol=1e-4, atol=1e-5)


def test_dry_run_says_which_pooling_and_why(tmp_path):
    from tests._helpers.cli import assert_says, describe, invoke

    run = trainer_run(tmp_path / "run", "gpt2", steps=(0,))
    result = invoke("audit", run, "--probe", run / "probe.jsonl", "--out", tmp_path / "s.zarr",
                    "--dry-run")
    assert result.exit_code == 0, describe(result)
    assert_says(result.stdout, "pooling last (default for a causal LM (GPT2LMHeadModel")
    chosen = invoke("audit", run, "--probe", run / "probe.jsonl", "--pooling", "mean",
                    "--out", tmp_path / "s.zarr", "--dry-run")
    assert_says(chosen.stdout, "pooling mean (--pooling)")
    assert not (tmp_path / "s.zarr").exists()
