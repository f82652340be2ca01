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


def _batch_log(run: Path) -> dict:
    return json.loads((run / "fl_batches.json").read_text())


def test_batch_list_in_step_order_gives_the_same_store(tmp_path):
    run = _sgd_run(tmp_path / "run")
    log = _batch_log(run)
    listed = [log["batches"][str(t)] for t in range(5)]
    (run / "list.json").write_text(json.dumps({"batches": listed}))
    (run / "list_short.json").write_text(json.dumps({"batches": listed[:-1]}))  # one per update
    (run / "bare.json").write_text(json.dumps(log["batches"]))  # {step: [...]} at the top
    stores = {}
    for name in ("fl_batches", "list", "list_short", "bare"):
        api.audit(str(run), out=tmp_path / f"{name}.zarr",
                  fl=FLOptions.from_files("ce", "0.1", str(run / f"{name}.json")))
        stores[name] = xr.open_zarr(tmp_path / f"{name}.zarr").fl_residual.values
    assert np.all(stores["fl_batches"][:-1] < 1e-11)
    for name in ("list", "list_short", "bare"):
        np.testing.assert_array_equal(stores[name], stores["fl_batches"])


BAD_BATCH_FILES = {
    "batches_string": ({"batches": "0,1,2"}, ["'batches' must be {step: [indices]}", "str"]),
    "list_too_long": ({"batches": [[0, 1]] * 7}, ["7 batches for 5 steps", "expected 4"]),
    "list_too_short": ({"batches": [[0, 1]] * 3}, ["3 batches for 5 steps"]),
    "index_out_of_range": ({"batches": [[0, 64]] * 5},
                           ["batch of step 0", "outside [0, 64)", "found [0, 64]", "--fl-probe"]),
    "float_index": ({"batches": [[0.5, 1]] * 5}, ["batch 0 must be a list of integer"]),
    "not_a_list": ({"0": 3, "1": [1]}, ["step 0 must be a list of integer", "got 3"]),
    "step_not_a_number": ({"first": [1, 2]}, ["'first' is not a step number"]),
    "top_level_list": ([[0, 1]] * 5, ["must be a JSON object"]),
}


@pytest.mark.parametrize("case", sorted(BAD_BATCH_FILES))
def test_bad_batch_files_are_exit_4_naming_the_file(tmp_path, case):
    from tests._helpers.cli import assert_says, describe, invoke

    run = _sgd_run(tmp_path / "run")
    content, needles = BAD_BATCH_FILES[case]
    bad = run / f"{case}.json"
    bad.write_text(json.dumps(content))
    result = invoke("audit", run, "--out", tmp_path / "s.zarr", "--fl-loss", "ce", "--fl-lr", "0.1",
                    "--fl-batches", bad)
    assert result.exit_code == 4, describe(result)
    assert isinstance(result.exception, SystemExit), describe(result)
    assert_says(result.output, str(bad), *[n.replace("'", '"') if n.startswith("'batches'")
                                           else n for n in needles])
    assert not (tmp_path / "s.zarr").exists()


def test_fl_probe_is_the_training_set_and_probe_keys_name_arrays(tmp_path):
    """One audit: TL on an analysis probe, FL on the training set (files with other names)."""
    from flq_audit.probes import make_probe
    from tests._helpers.cli import describe, run_cli

    run = _sgd_run(tmp_path / "run")
    with np.load(run / "probe.npz") as data:
        x, y = data["inputs"], data["targets"]
    (run / "probe.npz").unlink()
    np.savez(tmp_path / "train.npz", x=x, y=y, num_classes=np.int64(3))
    rng = np.random.default_rng(7)
    analysis_x = rng.normal(size=(40, 6)).astype(np.float32)
    analysis_y = rng.integers(0, 3, 40)
    torch.save({"feats": torch.from_numpy(analysis_x), "cls": torch.from_numpy(analysis_y),
                "num_classes": torch.tensor(3)}, tmp_path / "analysis.pt")
    done = run_cli(run, "--out", tmp_path / "s.zarr", "--probe", tmp_path / "analysis.pt",
                   "--probe-keys", "feats,cls", "--fl-probe", tmp_path / "train.npz",
                   "--fl-loss", "ce", "--fl-lr", "0.1", "--fl-batches", run / "fl_batches.json")
    assert done.returncode == 0, describe(done)
    ds = xr.open_zarr(tmp_path / "s.zarr")
    assert ds.sizes["sample"] == 40  # activations of the analysis probe
    assert np.all(ds.fl_residual.values[:-1] < 1e-11)  # batches index the training set
    assert np.all(ds.fl_r_step.values[:-1] < 1e-11)
    training = make_probe("train.npz", x, y, num_classes=3)
    fl_config = json.loads(ds.attrs["capture_config"])["fl"]
    assert fl_config["probe"]["fingerprint"] == training.fingerprint
    assert json.loads(ds.attrs["fl_probe"])["fingerprint"] == training.fingerprint


@pytest.mark.parametrize(("option", "rows", "width", "said"), [
    ("--probe", 10, 6, ("outside [0, 10)", "--fl-probe")),  # the batches index the FL probe
    ("--fl-probe", 64, 9, ("--fl-probe 'p.npz'", "(9,)", "do not fit the model")),
], ids=["batches-beyond-the-analysis-probe", "fl-probe-that-does-not-fit"])
def test_fl_inputs_that_do_not_fit_exit_4_naming_the_option(tmp_path, option, rows, width, said):
    from tests._helpers.cli import assert_says, describe, invoke

    run = _sgd_run(tmp_path / "run")
    np.savez(tmp_path / "p.npz", x=np.zeros((rows, width)), y=np.zeros(rows, np.int64),
             num_classes=np.int64(3))
    result = invoke("audit", run, "--out", tmp_path / "s.zarr", option, tmp_path / "p.npz",
                    "--fl-loss", "ce", "--fl-lr", "0.1", "--fl-batches", run / "fl_batches.json")
    assert result.exit_code == 4, describe(result)
    assert_says(result.output, *said)


def test_report_flags_a_momentum_run_and_not_a_plain_sgd_run(tmp_path):
    """The report flags the momentum run, and the audit that computed its FL values warned
    with the same sentences at its end; neither says so of the plain SGD run."""
    import warnings

    from flq_audit.errors import NotPlainSGDWarning
    from flq_audit.reading import fl_step_lines

    said, warned = {}, {}
    for momentum in (0.0, 0.9):
        run = _sgd_run(tmp_path / f"run{momentum}", momentum=momentum)
        store = tmp_path / f"m{momentum}.zarr"
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            api.audit(str(run), out=store,
                      fl=FLOptions.from_files("ce", "0.1", str(run / "fl_batches.json")))
        warned[momentum] = [str(w.message) for w in caught
                            if issubclass(w.category, NotPlainSGDWarning)]
        said[momentum] = fl_step_lines(api.open_store(store))
    assert warned[0.0] == []
    assert warned[0.9] == [" ".join(said[0.9])]
    assert said[0.0][0].startswith("FL: median fl_r_step = ")
    assert "are plain SGD steps" in said[0.0][0] and len(said[0.0]) == 1
    assert said[0.9][0].startswith("FL: the checkpoints are not plain SGD steps")
    assert "measure the optimizer, not Theorem 1" in said[0.9][0]
    assert "signature of momentum" in said[0.9][1]


@pytest.mark.slow
def test_cli_audit_of_a_momentum_run_warns_at_its_end(tmp_path):
    from tests._helpers.cli import describe, run_cli

    run = _sgd_run(tmp_path / "run", momentum=0.9)
    result = run_cli(run, "--out", tmp_path / "s.zarr", "--fl-loss", "ce", "--fl-lr", "0.1",
                     "--fl-batches", run / "fl_batches.json")
    assert result.returncode == 0, describe(result)
    said = " ".join(result.stderr.split())
    assert "NotPlainSGDWarning: FL: the checkpoints are not plain SGD steps" in said, said
    assert "signature of momentum" in said


def test_missing_fl_probe_is_exit_3_naming_the_option(tmp_path):
    from tests._helpers.cli import assert_says, describe, invoke

    run = _sgd_run(tmp_path / "run")
    result = invoke("audit", run, "--out", tmp_path / "s.zarr", "--fl-probe", tmp_path / "no.npz",
                    "--fl-loss", "ce", "--fl-lr", "0.1", "--fl-batches", run / "fl_batches.json")
    assert result.exit_code == 3, describe(result)
    assert_says(result.output, "--fl-probe: probe", "no.npz")


def test_prefetching_hands_the_next_checkpoint_to_the_fl_residual(tmp_path, monkeypatch):
    from flq_audit.options import RunOptions
    from tests._helpers.sources import hashed_folder_source
    from tests._helpers.stores import assert_same_store

    run = _sgd_run(tmp_path / "run")
    fl = FLOptions.from_files("ce", "0.1", str(run / "fl_batches.json"))
    source = hashed_folder_source(monkeypatch)
    stores = {}
    fetches = {}
    for prefetch in (True, False):
        source.fetched.clear()
        stores[prefetch] = tmp_path / f"prefetch-{prefetch}.zarr"
        api.audit(f"hashed:{run}", model=str(run / "model_spec.json"),
                  probe=str(run / "probe.npz"), out=stores[prefetch], fl=fl,
                  run=RunOptions(prefetch=prefetch, batch_size=16))
        fetches[prefetch] = sorted(source.fetched)
    assert fetches[True] == [0, 1, 2, 3, 4]  # the residual of step k reused the prefetched k+1
    assert fetches[False] == [0, 1, 1, 2, 2, 3, 3, 4, 4]  # without: k+1 is loaded twice
    assert_same_store(stores[True], stores[False], ignore_attrs=("source",))
    residual = xr.open_zarr(stores[True]).fl_residual.values
    assert np.all(residual[:-1] < 1e-11)
