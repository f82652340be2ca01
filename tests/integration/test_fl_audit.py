"""The FL residual through a real audit: plain SGD checkpoints saved every step."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr
from safetensors.torch import save_file

from flq_audit import api
from flq_audit.errors import CaptureError, OptionError
from flq_audit.models import build_from_spec
from flq_audit.options import FLOptions

SPEC = {"type": "mlp", "in_features": 6, "widths": [8, 8], "out_features": 3,
        "activation": "gelu", "bias": True}


def _sgd_run(root: Path, *, steps: int = 5, lr: float = 0.1, momentum: float = 0.0) -> Path:
    root.mkdir(parents=True)
    torch.manual_seed(0)
    model = build_from_spec(SPEC).double()
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(64, 6)), rng.integers(0, 3, 64)
    np.savez(root / "probe.npz", inputs=x, targets=y, num_classes=np.int64(3))
    (root / "model_spec.json").write_text(json.dumps(SPEC))
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    batches = {}
    for t in range(steps):
        state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(root / f"step_{t}.safetensors"))
        idx = rng.choice(64, 16, replace=False)
        batches[str(t)] = idx.tolist()
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(
            model(torch.from_numpy(x[idx])), torch.from_numpy(y[idx])).backward()
        optimizer.step()
    (root / "fl_batches.json").write_text(json.dumps({"loss": "ce", "lr": lr, "batches": batches}))
    return root


def test_plain_sgd_residual_is_at_rounding_level(tmp_path):
    run = _sgd_run(tmp_path / "run")
    api.audit(str(run), out=tmp_path / "s.zarr",
              fl=FLOptions.from_files("ce", "0.1", str(run / "fl_batches.json")))
    ds = xr.open_zarr(tmp_path / "s.zarr")
    residual = ds.fl_residual.values
    assert np.all(residual[:-1] < 1e-11)
    assert np.all(ds.fl_r_step.values[:-1] < 1e-11)
    assert np.isnan(residual[-1]).all()  # the last step has no successor
    # ΔG stored equals the Gram difference of the stored Grams (float32 Grams, so loose)
    gram = ds.gram.values.astype(np.float64)
    change = ds.fl_gram_change.values[0, 1, :8, :8]
    np.testing.assert_allclose(change, gram[1, 1, :8, :8] - gram[0, 1, :8, :8], atol=1e-5)


def test_momentum_run_is_flagged_by_r_step(tmp_path):
    run = _sgd_run(tmp_path / "run", momentum=0.9)
    api.audit(str(run), out=tmp_path / "s.zarr",
              fl=FLOptions.from_files("ce", "0.1", str(run / "fl_batches.json")))
    r_step = xr.open_zarr(tmp_path / "s.zarr").fl_r_step.values
    assert np.isclose(r_step[0], 0.0, atol=1e-11).all()  # first step: empty buffer = plain SGD
    assert (r_step[1:-1] > 0.1).all()


def test_missing_batch_is_refused_before_any_checkpoint(tmp_path):
    run = _sgd_run(tmp_path / "run")
    log = json.loads((run / "fl_batches.json").read_text())
    del log["batches"]["2"]
    (run / "partial.json").write_text(json.dumps(log))
    with pytest.raises(CaptureError, match="no batch recorded for step 2"):
        api.audit(str(run), out=tmp_path / "s.zarr",
                  fl=FLOptions.from_files("ce", "0.1", str(run / "partial.json")))
    assert not (tmp_path / "s.zarr").exists()


def test_legacy_fl_keywords_need_all_three_options(tmp_path):
    run = _sgd_run(tmp_path / "run")
    with pytest.warns(DeprecationWarning), \
            pytest.raises(OptionError, match="needs all of fl_loss, fl_lr and fl_batches"):
        api.audit(str(run), out=tmp_path / "s.zarr", fl_loss="ce")
    assert not (tmp_path / "s.zarr").exists()


def test_legacy_fl_keywords_give_the_same_store(tmp_path):
    run = _sgd_run(tmp_path / "run")
    batches = str(run / "fl_batches.json")
    api.audit(str(run), out=tmp_path / "new.zarr", fl=FLOptions.from_files("ce", "0.1", batches))
    with pytest.warns(DeprecationWarning, match="fl_batches"):
        api.audit(str(run), out=tmp_path / "old.zarr", fl_loss="ce", fl_lr=0.1,
                  fl_batches=batches)
    new, old = xr.open_zarr(tmp_path / "new.zarr"), xr.open_zarr(tmp_path / "old.zarr")
    assert new.attrs["capture_config"] == old.attrs["capture_config"]
    np.testing.assert_array_equal(new.fl_residual.values, old.fl_residual.values)


def test_fl_cli_needs_all_three_flags(tmp_path):
    from tests._helpers.cli import run_cli

    run = _sgd_run(tmp_path / "run")
    done = run_cli(run, "--out", tmp_path / "s.zarr", "--fl-loss", "ce", "--fl-lr", "0.1")
    assert done.returncode == 2, done.stderr
    assert "needs all of --fl-loss, --fl-lr and --fl-batches" in done.stderr
    assert not (tmp_path / "s.zarr").exists()
