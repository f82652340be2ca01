"""The ``flq-audit`` command line end to end: real subprocesses for the main paths,
Typer's CliRunner for the quick message checks. Every error case asserts the exit code and
the text on stderr."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from safetensors.torch import load_file, save_file

from tests._helpers.cli import assert_says, describe, invoke, run_many
from tests._helpers.runs import SMALL_SPEC, make_run

STEPS = [0, 10, 20]
LAYERS = ["layers.0", "layers.1", "layers.2"]
WIDTHS = [SMALL_SPEC["in_features"], *SMALL_SPEC["widths"]]


# ------------------------------------------------------------------ shared subprocess runs
@pytest.fixture(scope="module")
def e2e(tmp_path_factory):
    """Every end-to-end subprocess of this module, in three rounds of parallel commands.

    1. ``RUN --out S.zarr``, ``RUN --out D.zarr --dry-run --json`` and a missing SOURCE;
    2. ``metrics S.zarr`` (writes the metric into the store);
    3. ``metrics S.zarr --json``, ``show S.zarr --json`` and ``export ... --with-activations``.
    """
    root = tmp_path_factory.mktemp("cli")
    run = make_run(root / "run")
    store, dry, nc = root / "S.zarr", root / "dry" / "D.zarr", root / "out.nc"
    dry.parent.mkdir()
    procs = run_many({
        "audit": (run, "--out", store),
        "dry_run": (run, "--out", dry, "--dry-run", "--json"),
        "missing": (root / "nope", "--out", root / "x.zarr"),
    })
    if procs["audit"].returncode == 0:
        procs |= run_many({"metrics": ("metrics", store)})
        procs |= run_many({
            "metrics_json": ("metrics", store, "--json"),
            "show_json": ("show", store, "--json"),
            "export": ("export", store, nc, "--with-activations"),
        })
    return {"root": root, "run": run, "store": store, "dry": dry, "nc": nc, "procs": procs}


def _proc(e2e: dict, name: str):
    assert e2e["procs"]["audit"].returncode == 0, describe(e2e["procs"]["audit"])
    proc = e2e["procs"][name]
    assert proc.returncode == 0, describe(proc)
    return proc


@pytest.fixture
def audited(e2e):
    """(run, store) of the subprocess audit, with metrics computed."""
    _proc(e2e, "metrics")
    return e2e["run"], e2e["store"]


def _store_tl(store: Path) -> xr.DataArray:
    with xr.open_zarr(str(store)) as ds:
        return ds["target_linearity"].load()


def _mtimes(store: Path, prefix: str) -> dict[str, int]:
    return {str(p.relative_to(store)): p.stat().st_mtime_ns
            for p in store.glob(f"{prefix}*/**/*") if p.is_file()}


def _tl_from_metrics_json(data: dict) -> tuple[list, list, list]:
    """(steps, layers, values) of target_linearity from ``metrics --json``."""
    entry = data["target_linearity"]
    assert entry["dims"] == ["step", "layer"]
    return entry["coords"]["step"], entry["coords"]["layer"], entry["values"]


# ------------------------------------------------------------------ end to end (subprocess)
@pytest.mark.slow
def test_audit_subprocess_writes_every_step(e2e):
    proc = _proc(e2e, "audit")
    store = e2e["store"]
    assert_says(proc.stdout, "3 step(s) written", "0 already done", "0 failed")
    assert (store / "zarr.json").is_file()
    assert not Path(f"{store}.lock").exists()
    with xr.open_zarr(str(store)) as ds:
        assert ds["done"].values.tolist() == [True, True, True]
        assert [int(s) for s in ds["step"].values] == STEPS


@pytest.mark.slow
def test_metrics_prints_a_table_of_every_step_and_layer(e2e):
    out = _proc(e2e, "metrics").stdout
    for layer in LAYERS:
        assert layer in out
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("target_linearity"))
    end = next(i for i in range(start, len(lines)) if lines[i].startswith("└"))
    rows = [line for line in lines[start:end] if line.strip("│ ").split(" ")[0].isdigit()]
    assert [int(r.strip("│ ").split()[0]) for r in rows] == STEPS
    for row in rows:  # one value in [0, 1] per layer
        cells = [c.strip() for c in row.strip().strip("│").split("│")]
        assert len(cells) == 1 + len(LAYERS)
        assert all(0.0 <= float(c) <= 1.0 for c in cells[1:])


@pytest.mark.slow
def test_metrics_json_has_a_value_for_every_step_and_layer(e2e):
    proc = _proc(e2e, "metrics_json")
    steps, layers, values = _tl_from_metrics_json(json.loads(proc.stdout))
    assert [int(s) for s in steps] == STEPS
    assert layers == LAYERS
    values = np.asarray(values, dtype=float)
    assert values.shape == (len(STEPS), len(LAYERS))
    assert np.isfinite(values).all()
    np.testing.assert_allclose(values, _store_tl(e2e["store"]).values, rtol=1e-12)


@pytest.mark.slow
def test_show_json_lists_steps_layers_and_provenance(e2e):
    from flq_audit.probes import load_probe

    info = json.loads(_proc(e2e, "show_json").stdout)
    run = e2e["run"]
    assert [s["step"] for s in info["steps"]] == STEPS
    assert all(s["done"] and s["error"] is None for s in info["steps"])
    assert [s["label"] for s in info["steps"]] == [f"step_{s}.safetensors" for s in STEPS]
    assert [(x["name"], x["width"], x["gram_width"]) for x in info["layers"]] == list(
        zip(LAYERS, WIDTHS, WIDTHS, strict=True))
    assert Path(info["source"]) == run.resolve()
    assert info["probe"]["fingerprint"] == load_probe(run / "probe.npz").fingerprint
    assert info["probe"]["n_samples"] == info["n_samples"] == 40
    assert "target_linearity" in info["metrics"]
    assert info["bytes_on_disk"] > 0


@pytest.mark.slow
def test_export_netcdf_matches_the_store(e2e, tmp_path):
    _proc(e2e, "export")
    store = e2e["store"]
    with xr.open_dataset(e2e["nc"], engine="h5netcdf") as nc, xr.open_zarr(str(store)) as ds:
        tl = nc["target_linearity"]
        assert tl.dims == ("step", "layer")
        assert [int(s) for s in tl["step"].values] == STEPS
        assert [str(x) for x in tl["layer"].values] == LAYERS
        np.testing.assert_array_equal(tl.values, ds["target_linearity"].values)
        np.testing.assert_array_equal(nc["activations"].values, ds["activations"].values)
        np.testing.assert_array_equal(nc["targets"].values, ds["targets"].values)
        for owner, attrs in [("dataset", nc.attrs)] + [
            (name, var.attrs) for name, var in nc.variables.items()
        ]:
            for key, value in attrs.items():
                if isinstance(value, np.ndarray):  # CF flag_values: the variable's own type
                    assert value.dtype.kind in "iuf", f"{owner}.{key} = {value!r}"
                    continue
                assert isinstance(value, str | int | float | np.integer | np.floating), (
                    f"{owner}.{key} = {value!r} ({type(value).__name__})")
                assert not isinstance(value, bool | np.bool_), f"{owner}.{key} is a bool"
        assert nc.attrs["probe_fingerprint"] == ds.attrs["probe_fingerprint"]
    plain = tmp_path / "plain.nc"
    result = invoke("export", store, plain)
    assert result.exit_code == 0, describe(result)
    with xr.open_dataset(plain, engine="h5netcdf") as nc:
        assert "activations" not in nc and "gram" not in nc
        assert "target_linearity" in nc


@pytest.mark.slow
def test_dry_run_json_writes_nothing(e2e):
    plan = json.loads(_proc(e2e, "dry_run").stdout)
    run, store = e2e["run"], e2e["dry"]
    assert not store.exists() and not Path(f"{store}.lock").exists()
    assert list(store.parent.iterdir()) == []
    assert plan["steps"] == STEPS
    assert plan["store"] == str(store) and plan["store_exists"] is False
    assert [c["files"] for c in plan["checkpoints"]] == [[f"step_{s}.safetensors"] for s in STEPS]
    assert [c["bytes"] for c in plan["checkpoints"]] == [
        (run / f"step_{s}.safetensors").stat().st_size for s in STEPS]
    assert [(x["name"], x["width"]) for x in plan["layers"]] == list(zip(LAYERS, WIDTHS,
                                                                         strict=True))
    n, wmax, gmax = 40, max(WIDTHS), max(WIDTHS)
    # --grams compact: layers.0 (8 × 6) and layers.1 (8 × 8) keep WᵀW, layers.2 (3 × 8) W
    rows_out = [*SMALL_SPEC["widths"], SMALL_SPEC["out_features"]]
    assert [x["gram_form"] for x in plan["layers"]] == ["dense", "dense", "factor"]
    grams = 2 * gmax * gmax + rows_out[2] * gmax
    per_step = {"activations": len(LAYERS) * n * wmax * 4, "grams": grams * 4}  # float32
    assert plan["store_bytes_per_step"] == per_step
    assert plan["store_bytes_estimate"] == len(STEPS) * sum(per_step.values())


@pytest.mark.slow
def test_nonexistent_source_exits_3(e2e):
    proc = e2e["procs"]["missing"]
    assert proc.returncode == 3, describe(proc)
    assert_says(proc.stderr, "does not exist", str(e2e["root"] / "nope"))
    assert not (e2e["root"] / "x.zarr").exists()


def test_dry_run_table_writes_nothing(audited, tmp_path):
    run, _ = audited
    store = tmp_path / "new.zarr"
    result = invoke("audit", run, "--out", store, "--dry-run")
    assert result.exit_code == 0, describe(result)
    assert not store.exists()
    assert list(tmp_path.iterdir()) == []
    for name in [*(f"step_{s}.safetensors" for s in STEPS), *LAYERS, "new"]:
        assert_says(result.stdout, name)


# ------------------------------------------------------------------ reruns
def test_rerun_of_a_completed_audit_skips_every_step(audited):
    run, store = audited
    before = _mtimes(store, "activations") | _mtimes(store, "gram")
    result = invoke("audit", run, "--out", store, "--json")
    assert result.exit_code == 0, describe(result)
    summary = json.loads(result.stdout)
    assert summary["skipped"] == STEPS
    assert summary["written"] == []
    assert summary["failed"] == {}
    assert _mtimes(store, "activations") | _mtimes(store, "gram") == before


def test_metrics_recomputed_with_same_parameters_leaves_the_store_unchanged(audited):
    _, store = audited
    values = _store_tl(store).values
    files = _mtimes(store, "target_linearity")
    assert files
    result = invoke("metrics", store)
    assert result.exit_code == 0, describe(result)
    np.testing.assert_array_equal(_store_tl(store).values, values)
    assert _mtimes(store, "target_linearity") == files


def test_metrics_with_pca_is_stored_beside_the_default(audited):
    _, store = audited
    default = _store_tl(store).values
    result = invoke("metrics", store, "--pca", "2", "--pca-threshold", "4")
    assert result.exit_code == 0, describe(result)
    with xr.open_zarr(str(store)) as ds:
        pca_vars = [v for v in ds.data_vars if v.startswith("target_linearity__pca2")
                    and ds[v].dims == ("step", "layer")
                    and not v.endswith(("_n_samples", "_n_features", "_rank", "_chance_floor",
                                        "_cutoff", "_kept_ratio", "_dropped_ratio", "_dual"))]
        assert len(pca_vars) == 1, list(ds.data_vars)
        np.testing.assert_array_equal(ds["target_linearity"].values, default)
        projected = ds[pca_vars[0]].values
        np.testing.assert_array_equal(ds[f"{pca_vars[0]}_n_features"].values, 2.0)
        np.testing.assert_array_equal(ds["target_linearity_n_features"].values,
                                      np.broadcast_to(WIDTHS, (len(STEPS), len(LAYERS))))
    assert np.isfinite(projected).all()
    # every layer is wider than 4, so each is projected onto 2 directions: TL changes
    assert not np.allclose(projected, default)
    assert_says(result.stdout, pca_vars[0])


# ------------------------------------------------------------------ bad input
def test_folder_without_checkpoints_exits_3(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no weights here")
    result = invoke("audit", tmp_path / "empty", "--out", tmp_path / "x.zarr")
    assert result.exit_code == 3, describe(result)
    assert_says(result.stderr, "no checkpoints found", "notes.txt")


def test_two_files_claiming_one_step_exit_4(tmp_path):
    run = make_run(tmp_path / "run")
    shutil.copy(run / "step_10.safetensors", run / "ckpt-10.safetensors")
    result = invoke("audit", run, "--out", tmp_path / "x.zarr")
    assert result.exit_code == 4, describe(result)
    assert_says(result.stderr, "step 10", "step_10.safetensors", "ckpt-10.safetensors")
    assert not (tmp_path / "x.zarr").exists()


def test_missing_probe_model_and_store_are_input_missing(audited, tmp_path):
    run, _ = audited
    result = invoke("audit", run, "--probe", tmp_path / "nope.npz", "--out", tmp_path / "x.zarr")
    assert result.exit_code == 3, describe(result)
    assert_says(result.stderr, "nope.npz", "neither a builtin")
    result = invoke("audit", run, "--model", tmp_path / "nope.json", "--out", tmp_path / "x.zarr")
    assert result.exit_code == 3, describe(result)
    assert_says(result.stderr, "nope.json", "does not exist")
    result = invoke("show", tmp_path / "nowhere.zarr")
    assert result.exit_code == 3, describe(result)
    assert_says(result.stderr, "nowhere.zarr", "does not exist")


def test_errors_are_json_on_stdout_with_json(tmp_path):
    run = make_run(tmp_path / "run")
    shutil.copy(run / "step_10.safetensors", run / "ckpt-10.safetensors")
    result = invoke("audit", run, "--out", tmp_path / "x.zarr", "--json")
    assert result.exit_code == 4, describe(result)
    payload = json.loads(result.stdout)
    assert payload["exit_code"] == 4
    assert payload["error"]["type"] == "StepSelectionError"
    assert payload["error"]["step"] == 10
    assert "ckpt-10.safetensors" in payload["error"]["message"]


def test_probe_that_does_not_fit_the_model_exits_4(tmp_path):
    run = make_run(tmp_path / "run")
    probe = tmp_path / "five_features.npz"
    np.savez(probe, inputs=np.zeros((10, 5), np.float32), targets=np.zeros(10, np.int64),
             num_classes=np.int64(3))
    result = invoke("audit", run, "--probe", probe, "--out", tmp_path / "x.zarr")
    assert result.exit_code == 4, describe(result)
    assert_says(result.stderr, "do not fit")
    assert not (tmp_path / "x.zarr").exists()


def test_missing_and_extra_keys_fail_their_steps_only(tmp_path):
    run = make_run(tmp_path / "run")
    originals = {s: load_file(str(run / f"step_{s}.safetensors")) for s in (10, 20)}
    state = dict(originals[10])
    del state["layers.1.bias"]
    save_file(state, str(run / "step_10.safetensors"))
    state = dict(originals[20])
    state["extra.weight"] = state["layers.0.weight"].clone()
    save_file(state, str(run / "step_20.safetensors"))
    store = tmp_path / "S.zarr"
    result = invoke("audit", run, "--out", store)
    assert result.exit_code == 5, describe(result)
    assert_says(result.stderr, "step 10", "missing keys [layers.1.bias]")
    assert_says(result.stderr, "step 20", "unexpected keys [extra.weight]")
    shown = invoke("show", store, "--json")
    assert shown.exit_code == 0, describe(shown)
    steps = {s["step"]: s for s in json.loads(shown.stdout)["steps"]}
    assert steps[0]["done"] and steps[0]["error"] is None
    assert not steps[10]["done"] and "layers.1.bias" in steps[10]["error"]
    assert not steps[20]["done"] and "extra.weight" in steps[20]["error"]
    table = invoke("show", store)
    assert table.exit_code == 0, describe(table)
    assert_says(table.stdout, "failed: step 10: the checkpoint does not fit")
    metrics = invoke("metrics", store, "--json")
    assert metrics.exit_code == 0, describe(metrics)
    _, _, values = _tl_from_metrics_json(json.loads(metrics.stdout))
    assert values[1] == values[2] == [None] * len(LAYERS)  # failed steps have no value
    assert all(isinstance(v, float) for v in values[0])

    # repaired checkpoints: a rerun writes only the failed steps and clears their errors
    for step, original in originals.items():
        save_file(original, str(run / f"step_{step}.safetensors"))
    rerun = invoke("audit", run, "--out", store, "--json")
    assert rerun.exit_code == 0, describe(rerun)
    summary = json.loads(rerun.stdout)
    assert (summary["written"], summary["skipped"], summary["failed"]) == ([10, 20], [0], {})
    shown = json.loads(invoke("show", store, "--json").stdout)
    assert all(s["done"] and s["error"] is None for s in shown["steps"])
    metrics = invoke("metrics", store, "--json")
    assert metrics.exit_code == 0, describe(metrics)
    _, _, values = _tl_from_metrics_json(json.loads(metrics.stdout))
    assert all(isinstance(v, float) for row in values for v in row)


def test_truncated_safetensors_fails_its_step(tmp_path):
    run = make_run(tmp_path / "run")
    path = run / "step_10.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    store = tmp_path / "S.zarr"
    result = invoke("audit", run, "--out", store)
    assert result.exit_code == 5, describe(result)
    assert_says(result.stderr, "step_10.safetensors", "truncated")
    with xr.open_zarr(str(store)) as ds:
        assert ds["done"].values.tolist() == [True, False, True]
        assert "truncated" in str(ds["error"].values[1])
        assert np.isnan(ds["activations"].sel(step=10).values).all()


def test_foreign_store_is_refused_until_overwrite(tmp_path):
    from flq_audit.probes import load_probe

    first, second = make_run(tmp_path / "a"), make_run(tmp_path / "b", seed=1)
    store = tmp_path / "S.zarr"
    assert invoke("audit", first, "--out", store, "-q").exit_code == 0
    result = invoke("audit", second, "--out", store)
    assert result.exit_code == 4, describe(result)
    assert_says(result.stderr, "probe_fingerprint", "--overwrite")
    with xr.open_zarr(str(store)) as ds:  # untouched
        assert ds.attrs["source"] == str(first.resolve())
    result = invoke("audit", second, "--out", store, "--overwrite", "--json")
    assert result.exit_code == 0, describe(result)
    assert json.loads(result.stdout)["written"] == STEPS
    with xr.open_zarr(str(store)) as ds:
        assert ds.attrs["source"] == str(second.resolve())
        assert ds.attrs["probe_fingerprint"] == load_probe(second / "probe.npz").fingerprint


def test_show_on_a_plain_directory_exits_4(tmp_path):
    (tmp_path / "plain").mkdir()
    result = invoke("show", tmp_path / "plain")
    assert result.exit_code == 4, describe(result)
    assert_says(result.stderr, "not a Zarr store")


def test_bad_steps_expression_is_refused(audited, tmp_path):
    run, _ = audited
    result = invoke("audit", run, "--steps", "a:b", "--out", tmp_path / "x.zarr")
    assert result.exit_code == 2, describe(result)  # malformed: a usage error
    assert_says(result.stderr, "--steps 'a:b'", "not an integer")
    result = invoke("audit", run, "--steps", "5,10", "--out", tmp_path / "x.zarr")
    assert result.exit_code == 4, describe(result)  # well-formed, but no such step
    assert_says(result.stderr, "[5] not found", "0, 10, 20")
    assert not (tmp_path / "x.zarr").exists()


def test_unknown_metric_is_a_usage_error_listing_the_available(audited):
    _, store = audited
    result = invoke("metrics", store, "--metric", "nope")
    assert result.exit_code == 2, describe(result)
    assert_says(result.stderr, "unknown metric", "nope", "available", "'tl'")


# ------------------------------------------------------------------ destructive options
def _snapshot(*roots: Path) -> dict[str, str]:
    from tests.faults._tree import tree_hashes

    return tree_hashes(*roots)


def test_overwrite_refuses_a_folder_it_did_not_make(tmp_path):
    run = make_run(tmp_path / "run")
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "todo.txt").write_text("keep me")
    before = _snapshot(notes, run)
    result = invoke("audit", run, "--out", notes, "--overwrite")
    assert result.exit_code == 2, describe(result)
    assert_says(result.stderr, "--overwrite refused", str(notes), "not an flq-audit store")
    assert _snapshot(notes, run) == before


def test_overwrite_refuses_the_source_and_a_file(tmp_path):
    run = make_run(tmp_path / "run")
    before = _snapshot(run)
    result = invoke("audit", run, "--out", run, "--overwrite")
    assert result.exit_code == 2, describe(result)
    assert_says(result.stderr, "is the checkpoint source")
    result = invoke("audit", run, "--out", tmp_path, "--overwrite")
    assert result.exit_code == 2, describe(result)
    assert_says(result.stderr, "contains the checkpoint source")
    result = invoke("audit", run, "--out", run / "probe.npz", "--overwrite")
    assert result.exit_code == 2, describe(result)
    assert_says(result.stderr, "is a file")
    assert _snapshot(run) == before


def test_export_into_the_store_is_refused(tmp_path):
    store = tmp_path / "S.zarr"
    assert invoke("audit", make_run(tmp_path / "run"), "--out", store, "-q").exit_code == 0
    before = _snapshot(store)
    for target in (store / "zarr.json", store, store / "gram" / "x.nc"):
        result = invoke("export", store, target)
        assert result.exit_code == 2, describe(result)
        assert_says(result.stderr, "export target", "nothing was written")
    assert _snapshot(store) == before


def test_a_missing_default_model_points_at_help_that_lists_the_option(tmp_path):
    run = make_run(tmp_path / "run")
    (run / "model_spec.json").unlink()
    result = invoke("audit", run, "--out", tmp_path / "x.zarr")
    assert result.exit_code == 3, describe(result)
    assert_says(result.stderr, "--model", "model_spec.json")
    command = result.stderr.split("`flq-audit ", 1)[1].split("`", 1)[0].split()
    shown = invoke(*command)
    assert shown.exit_code == 0, describe(shown)
    assert "--model" in shown.stdout and "--probe" in shown.stdout
    assert not (tmp_path / "x.zarr").exists()
