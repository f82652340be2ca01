"""Prefetching, background Grams and the dask-free template: same store, bounded memory."""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

from flq_audit import api
from flq_audit.audit.prefetch import Prefetcher
from flq_audit.options import CaptureOptions, RunOptions
from tests._helpers.hf_models import trainer_run
from tests._helpers.runs import make_run, state_for
from tests._helpers.stores import assert_same_store

STEPS = (0, 10, 20, 30)


def _arrays(store: Path) -> dict[str, np.ndarray]:
    group = zarr.open_group(str(store), mode="r")
    return {name: np.asarray(group[name][:]) for name in group.array_keys()}


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    return make_run(tmp_path_factory.mktemp("prefetch") / "run", STEPS)


def test_prefetch_writes_the_same_store_as_the_sequential_loop(run, tmp_path):
    with_prefetch, without = tmp_path / "a.zarr", tmp_path / "b.zarr"
    api.audit(str(run), out=with_prefetch, run=RunOptions(device="cpu", batch_size=16))
    api.audit(str(run), out=without,
              run=RunOptions(device="cpu", batch_size=16, prefetch=False, threads=1))
    assert_same_store(with_prefetch, without)
    arrays = _arrays(with_prefetch)
    assert arrays["done"].all()
    w = state_for(20)["layers.0.weight"].double()  # an independent Gram: WᵀW in float64
    np.testing.assert_allclose(arrays["gram"][2, 0, :6, :6], (w.t() @ w).numpy(), rtol=1e-6)
    for i, step in enumerate(STEPS):
        data = (run / f"step_{step}.safetensors").read_bytes()
        assert json.loads(str(arrays["sha256"][i])) == [hashlib.sha256(data).hexdigest()]


def test_a_prefetched_bad_checkpoint_fails_only_its_own_step(run, tmp_path):
    broken = tmp_path / "run"
    broken.mkdir()
    for item in run.iterdir():
        (broken / item.name).write_bytes(item.read_bytes())
    (broken / "step_20.safetensors").write_bytes(b"\0" * 64)  # truncated, not safetensors
    store = tmp_path / "s.zarr"
    result = api.audit(str(broken), out=store, run=RunOptions(device="cpu", batch_size=16))
    assert sorted(result.written) == [0, 10, 30] and list(result.failed) == [20]
    arrays = _arrays(store)
    assert arrays["done"].tolist() == [True, True, False, True]
    assert "step 20" in str(arrays["error"][2]) and str(arrays["error"][3]) == ""


def test_prefetcher_keeps_at_most_two_items_resident():
    resident, peak, lock = [0], [0], threading.Lock()

    def load(item: int) -> int:
        with lock:
            resident[0] += 1
            peak[0] = max(peak[0], resident[0])
        return item

    prefetcher = Prefetcher(range(20), load, ahead=1)
    seen = []
    for _ in range(20):
        item = prefetcher.next()
        threading.Event().wait(0.002)  # let the thread run ahead as far as it may
        seen.append(item)
        with lock:
            resident[0] -= 1
        prefetcher.release()
    prefetcher.close()
    assert seen == list(range(20)) and peak[0] == 2


def test_prefetcher_hands_a_load_exception_to_the_caller():
    def load(item: int) -> int:
        if item == 1:
            raise MemoryError("no room")
        return item

    prefetcher = Prefetcher([0, 1], load)
    assert prefetcher.next() == 0
    prefetcher.release()
    with pytest.raises(MemoryError, match="no room"):
        prefetcher.next()
    prefetcher.close()


def test_the_template_declares_data_arrays_as_xarray_reads_them(run, tmp_path):
    import xarray as xr

    store = tmp_path / "fresh.zarr"
    api.audit(str(run), out=store, steps="0,10", run=RunOptions(device="cpu", batch_size=16),
              capture=CaptureOptions(max_samples=40))
    ds = xr.open_zarr(store)
    acts = ds["activations"]
    assert acts.dims == ("step", "layer", "sample", "feature") and acts.shape[1:] == (3, 40, 8)
    assert ds["step"].values[ds["done"].values].tolist() == [0, 10]  # every listed step laid out
    assert {"label", "commit", "class_label", "layer_kind", "width"} <= set(acts.coords)
    assert acts.encoding["chunks"] == (1, 1, 40, 8)
    assert acts.attrs["long_name"] == "input features of each weight layer"
    assert ds["gram"].dims == ("step", "layer", "gram_i", "gram_j")
    assert "class_label" not in ds["gram"].coords
    fresh = tmp_path / "never-written.zarr"
    from flq_audit.store._template import write_template

    layout = api.plan_audit(str(run), steps="0,10", out=tmp_path / "x.zarr",
                            run=RunOptions(device="cpu")).layout
    write_template(str(fresh), layout, version="0")
    empty = xr.open_zarr(fresh, consolidated=False)
    assert np.isnan(empty["activations"].values).all() and np.isnan(empty["gram"].values).all()
    assert not empty["done"].values.any()
    assert (empty["prediction"].fillna(-1).values == -1).all()  # unwritten: masked, not class 0


def test_transformers_models_run_without_a_kv_cache(tmp_path):
    from flq_audit.models.hf import load_hf_checkpoint

    folder = trainer_run(tmp_path / "neox", "neox", steps=(0,)) / "checkpoint-0"
    built = load_hf_checkpoint(folder, step=0)
    assert built.module.config.use_cache is False
    with torch.no_grad():
        output = built.module(input_ids=torch.tensor([[1, 2, 3]]))
    assert output.past_key_values is None


def test_cli_threads_and_no_prefetch(run, tmp_path):
    from tests._helpers.cli import invoke

    refused = invoke("audit", run, "--threads", "0", "--out", tmp_path / "x.zarr")
    assert refused.exit_code == 2
    store = tmp_path / "cli.zarr"
    before = torch.get_num_threads()
    try:
        done = invoke("audit", run, "--threads", "1", "--no-prefetch", "--device", "cpu",
                      "--out", store, "-q")
        assert done.exit_code == 0, done.output
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    assert _arrays(store)["done"].all()


def test_the_prefetcher_reads_a_steps_weights_ahead_only_for_the_fl_residual(run, tmp_path):
    from flq_audit.audit.step import prefetched
    from flq_audit.options import FLOptions

    plain = api.plan_audit(str(run), out=tmp_path / "p.zarr")
    ref = plain.refs[1]
    fetched = prefetched(plain, ref, RunOptions(), set())
    assert fetched is not None and not fetched.read and not fetched.state
    data = (run / f"step_{ref.step}.safetensors").read_bytes()
    assert list(fetched.sha256) == [hashlib.sha256(data).hexdigest()]  # checksummed ahead
    fl = api.plan_audit(str(run), out=tmp_path / "f.zarr",
                        fl=FLOptions(loss="ce", lr=0.1, batches="full"))
    ahead = prefetched(fl, ref, RunOptions(), set())
    assert ahead is not None and ahead.read
    assert torch.equal(ahead.state["layers.0.weight"], state_for(ref.step)["layers.0.weight"])


def test_a_prefetched_transformers_audit_writes_the_same_store(tmp_path):
    hf = trainer_run(tmp_path / "hf", "neox", steps=(0, 10, 20))
    probe = tmp_path / "probe.jsonl"
    (hf / "probe.jsonl").rename(probe)  # outside the source: every file there is audited
    stores = {flag: tmp_path / f"{flag}.zarr" for flag in (True, False)}
    for flag, store in stores.items():
        api.audit(str(hf), probe=str(probe), out=store,
                  run=RunOptions(device="cpu", prefetch=flag, threads=1))
    assert_same_store(stores[True], stores[False])
    arrays = _arrays(stores[True])
    assert arrays["done"].all()
    for i, step in enumerate((0, 10, 20)):
        data = (hf / f"checkpoint-{step}" / "model.safetensors").read_bytes()
        assert json.loads(str(arrays["sha256"][i])) == [hashlib.sha256(data).hexdigest()]
