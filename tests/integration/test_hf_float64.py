"""``--activation-dtype float64`` on a transformers model: float64 weights, read unrounded."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr

pytest.importorskip("transformers")

from flq_audit import api
from flq_audit.options import CaptureOptions, TextProbeOptions
from tests._helpers.hf_models import model_for, tokenizer, trainer_run

LAYER = "gpt_neox.layers.1.mlp.dense_4h_to_h"


def _float64_run(root: Path) -> Path:
    """A transformers run whose one checkpoint holds float64 weights (not float32 numbers)."""
    run = trainer_run(root, "neox", steps=(0,))
    folder = run / "checkpoint-0"
    model = model_for("neox", tokenizer().vocab_size, seed=0).double()
    with torch.no_grad():
        for param in model.parameters():  # off the float32 grid
            param.add_(torch.randn_like(param) * 1e-6)
    model.save_pretrained(folder)
    return run


def _hand_replay(folder: Path, texts: list[str], dtype: torch.dtype) -> np.ndarray:
    """The mean over tokens of ``LAYER``'s input, one text at a time (no padding), with the
    checkpoint read by transformers in ``dtype`` and the forward run in float64."""
    from transformers import AutoTokenizer, GPTNeoXForCausalLM

    model = GPTNeoXForCausalLM.from_pretrained(folder, dtype=dtype).double().eval()
    tok = AutoTokenizer.from_pretrained(folder)
    seen: list[torch.Tensor] = []
    layer = dict(model.named_modules())[LAYER]
    handle = layer.register_forward_pre_hook(lambda _m, args: seen.append(args[0][0].mean(0)))
    try:
        with torch.no_grad():
            for text in texts:
                model(**tok(text, return_tensors="pt"))
    finally:
        handle.remove()
    return torch.stack(seen).numpy()


def test_float64_audit_reads_transformers_weights_in_float64(tmp_path):
    from tests._helpers.hf_models import TEXTS

    run = _float64_run(tmp_path / "run")
    api.audit(str(run), probe=str(run / "probe.jsonl"), out=tmp_path / "s.zarr",
              text=TextProbeOptions(pooling="mean"),
              capture=CaptureOptions(activation_dtype="float64", layers=(LAYER,)))
    ds = xr.open_zarr(tmp_path / "s.zarr")
    assert ds.activations.dtype == np.float64
    stored = ds.activations.sel(step=0, layer=LAYER).values[:, : int(ds.width.sel(layer=LAYER))]
    folder = run / "checkpoint-0"
    direct = _hand_replay(folder, TEXTS, torch.float64)
    np.testing.assert_allclose(stored, direct, rtol=1e-12, atol=1e-12)
    upcast = _hand_replay(folder, TEXTS, torch.float32)  # float32 weights, upcast
    assert np.abs(stored - upcast).max() > 1e-9
