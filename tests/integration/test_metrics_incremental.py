"""Metrics as steps arrive: per-step groups compute only the done steps they lack and keep
the stored ones, trajectory outputs are recomputed, and no read path passes a stale value off
as current.

Steps "arrive" by clearing ``done`` of some steps of a complete store with zarr (the state
of steps not audited yet), computing metrics, then setting ``done`` back; and by the real
flow, ``--steps first`` then ``--steps all`` into one store.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import xarray as xr
import zarr

from flq_audit import api
from flq_audit.errors import MetricError
from flq_audit.metrics._graph import counting_blocks
from tests._helpers.cli import describe, invoke

pytestmark = pytest.mark.slow
GROUPS = ["tl", "surrogate", "gram", "dynamics", "nc"]
PER_STEP_KERNELS = ["tl", "surrogate", "gram", "nc"]


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    """An audited store without metrics, and a copy with metrics computed from scratch."""
    from tests._helpers.runs import make_run

    root = tmp_path_factory.mktemp("incremental")
    run = make_run(root / "run")
    api.audit(str(run), out=root / "clean.zarr")
    shutil.copytree(root / "clean.zarr", root / "reference.zarr")
    api.compute_metrics(root / "reference.zarr", metrics=GROUPS)
    return run, root / "clean.zarr", root / "reference.zarr"


def _set_done(store, steps_to_clear: list[int], value: bool) -> None:
    group = zarr.open_group(str(store), mode="r+")
    steps = list(np.asarray(group["step"][:]))
    done = np.asarray(group["done"][:])
    for step in steps_to_clear:
        done[steps.index(step)] = value
    group["done"][:] = done


def _metric_values(store) -> dict[str, np.ndarray]:
    with xr.open_zarr(str(store), consolidated=False) as ds:
        return {name: ds[name].values for name, var in ds.data_vars.items()
                if "flq_metric" in var.attrs}


def _assert_same_metrics(store, reference) -> None:
    got, want = _metric_values(store), _metric_values(reference)
    assert sorted(got) == sorted(want)
    for name, values in want.items():
        assert got[name].shape == values.shape, name
        assert got[name].tobytes() == values.tobytes(), name  # bitwise, NaN included


def _layout(store) -> tuple[list[int], int]:
    with xr.open_zarr(str(store), consolidated=False) as ds:
        return [int(s) for s in ds["step"].values], ds.sizes["layer"]


def _half_done(clean, tmp_path):
    """A copy of ``clean`` whose metrics were computed while its last steps were not done."""
    store = tmp_path / "s.zarr"
    shutil.copytree(clean, store)
    steps, layers = _layout(store)
    later = steps[len(steps) // 2:]
    _set_done(store, later, False)
    api.compute_metrics(store, metrics=GROUPS)
    _set_done(store, later, True)
    return store, later, len(steps), layers


def test_added_steps_compute_only_the_new_blocks_and_equal_a_fresh_run(stores, tmp_path):
    _, clean, reference = stores
    store, later, _, layers = _half_done(clean, tmp_path)
    before = _metric_values(store)
    with counting_blocks() as counts:
        api.compute_metrics(store, metrics=GROUPS)
    for group in PER_STEP_KERNELS:  # one kernel call per new (step, layer), none for others
        assert counts[group] == len(later) * layers, (group, dict(counts))
    _assert_same_metrics(store, reference)  # per-step and trajectory outputs alike
    after = _metric_values(store)
    steps, _ = _layout(store)
    kept = [steps.index(s) for s in steps if s not in later]
    for name in ("target_linearity", "surrogate", "gram_effective_rank", "nc1"):
        assert after[name][kept].tobytes() == before[name][kept].tobytes(), name
    # the trajectory outputs used the new steps: the cosine to the final Gram changed
    assert not np.array_equal(after["gram_cosine_to_final"], before["gram_cosine_to_final"],
                              equal_nan=True)
    with counting_blocks() as counts:  # current now: read back, nothing computed
        api.compute_metrics(store, metrics=GROUPS)
    assert sum(counts.values()) == 0


def test_a_fresh_run_computes_every_block(stores, tmp_path):
    _, clean, _ = stores
    store = tmp_path / "s.zarr"
    shutil.copytree(clean, store)
    steps, layers = _layout(store)
    with counting_blocks() as counts:
        api.compute_metrics(store, metrics=["tl"])
    assert counts["tl"] == len(steps) * layers


def test_a_stale_value_cannot_be_read_as_current(stores, tmp_path):
    _, clean, reference = stores
    store, later, n_steps, _ = _half_done(clean, tmp_path)
    computed_on = n_steps - len(later)
    opened = api.open_store(store)
    with pytest.raises(MetricError, match=f"stale: computed on {computed_on} of the {n_steps} done steps"):
        opened.flq.metric("target_linearity")
    flagged = opened.flq.metric("target_linearity", allow_stale=True)
    assert flagged.attrs["flq_state"] == "stale"
    assert len(flagged.attrs["flq_computed_on"]) == computed_on
    summary = opened.flq.summary()
    assert set(summary.stale_groups) == set(GROUPS)
    assert all(v == [computed_on, n_steps] for v in summary.stale_groups.values())
    shown = invoke("show", store)
    assert shown.exit_code == 0, describe(shown)
    text = " ".join(shown.stdout.split())
    assert (f"stale {', '.join(sorted(GROUPS))} (computed on {computed_on} of {n_steps} done "
            f"steps; run `flq-audit metrics {store}`)") in text
    exported = api.export(store, tmp_path / "s.nc")
    with xr.open_dataset(exported, engine="h5netcdf") as nc:
        assert nc["target_linearity"].attrs["flq_state"] == "stale"
        assert int(nc["target_linearity"].attrs["flq_computed_on_steps"]) == computed_on
    # the metrics read-back recomputes a stale group rather than returning it
    values = api.compute_metrics(store, metrics=["tl"])
    with xr.open_zarr(str(reference), consolidated=False) as ref:
        want = ref["target_linearity"].values
    assert values["target_linearity"].values.tobytes() == want.tobytes()
    assert api.open_store(store).flq.metric("target_linearity").attrs.get("flq_state") is None


def test_steps_first_then_all_equals_the_one_shot_metrics(stores, tmp_path):
    run, _, reference = stores
    store = tmp_path / "s.zarr"
    api.audit(str(run), out=store, steps="first")
    api.compute_metrics(store, metrics=GROUPS)
    api.audit(str(run), out=store, steps="all")
    steps, layers = _layout(store)
    with counting_blocks() as counts:
        api.compute_metrics(store, metrics=GROUPS)
    assert counts["tl"] == (len(steps) - 1) * layers
    _assert_same_metrics(store, reference)


def _energy(block, options):
    return (float(np.trace(block.moments.hh)),)


@pytest.mark.parametrize("per_step", [False, True])
def test_a_plugin_group_is_recomputed_whole_unless_it_declares_per_step(
        stores, tmp_path, monkeypatch, per_step):
    from flq_audit.metrics import MetricSpec, Output, _spec, register_metric

    monkeypatch.setattr(_spec, "_REGISTRY", dict(_spec.registry()))
    register_metric(MetricSpec("energy", frozenset({"moments"}), {"energy": Output("tr HᵀH")},
                               kernel=_energy, per_step=per_step))
    _, clean, _ = stores
    store = tmp_path / "s.zarr"
    shutil.copytree(clean, store)
    steps, layers = _layout(store)
    _set_done(store, steps[1:], False)
    api.compute_metrics(store, metrics=["energy"])
    _set_done(store, steps[1:], True)
    with counting_blocks() as counts:
        values = api.compute_metrics(store, metrics=["energy"])
    assert counts["energy"] == (len(steps) - 1 if per_step else len(steps)) * layers
    fresh = tmp_path / "fresh.zarr"
    shutil.copytree(clean, fresh)
    want = api.compute_metrics(fresh, metrics=["energy"])
    assert values["energy"].values.tobytes() == want["energy"].values.tobytes()
