"""``--layers`` by role from the command line: the dry run's role column, real audits."""

from __future__ import annotations

import json

import numpy as np
import pytest
import xarray as xr

import flq_audit  # noqa: F401  (the ds.flq accessor)
from tests._helpers.cli import describe, invoke
from tests._helpers.hf_models import trainer_run

pytest.importorskip("transformers")


def test_roles_in_the_dry_run_and_in_real_audits(tmp_path):
    neox = trainer_run(tmp_path / "neox", "neox", steps=(0,))
    gpt2 = trainer_run(tmp_path / "gpt2", "gpt2", steps=(0,))
    probe = neox / "probe.jsonl"
    selection = ("--layers", "mlp.down,attn.out@1", "--layers", "unembed")
    procs = {
        "json": invoke("audit", neox, "--probe", probe, *selection, "--dry-run", "--json"),
        "table": invoke("audit", neox, "--probe", probe, *selection, "--dry-run"),
        "lacks": invoke("audit", neox, "--probe", probe, "--layers", "mlp.gate",
                        "--out", tmp_path / "no.zarr"),
        "replay": invoke("audit", neox, "--probe", probe, "--layers", "mlp.down@-1",
                         "--out", tmp_path / "r.zarr"),
        "weights": invoke("audit", gpt2, "--weights-only", "--layers", "embed,mlp.up@0",
                          "--out", tmp_path / "w.zarr"),
    }
    for name in ("json", "table", "replay", "weights"):
        assert procs[name].exit_code == 0, describe(procs[name])
    layers = json.loads(procs["json"].stdout)["layers"]
    assert [(la["name"], la["role"]) for la in layers] == [
        ("gpt_neox.layers.0.mlp.dense_4h_to_h", "mlp.down"),
        ("gpt_neox.layers.1.attention.dense", "attn.out"),
        ("gpt_neox.layers.1.mlp.dense_4h_to_h", "mlp.down"),
        ("lm_head", "unembed")]
    rows = [line.split("│")[1:-1] for line in procs["table"].stdout.splitlines()
            if "dense" in line or "lm_head" in line]
    assert [[row[0].strip(), row[-1].strip()] for row in rows] == [  # layer ... role
        ["gpt_neox.layers.0.mlp.dense_4h_to_h", "mlp.down"],
        ["gpt_neox.layers.1.attention.dense", "attn.out"],
        ["gpt_neox.layers.1.mlp.dense_4h_to_h", "mlp.down"], ["lm_head", "unembed"]]
    assert "role" in procs["table"].stdout

    lacks = procs["lacks"]
    assert lacks.exit_code == 4, describe(lacks)
    assert "mlp.gate" in lacks.stderr and "gpt_neox" in lacks.stderr
    assert "Traceback" not in lacks.stderr and not (tmp_path / "no.zarr").exists()

    with xr.open_zarr(tmp_path / "r.zarr") as ds:
        assert ds["layer"].values.tolist() == ["gpt_neox.layers.1.mlp.dense_4h_to_h"]
        assert bool(ds["done"].values.all())
    with xr.open_zarr(tmp_path / "w.zarr") as ds:
        assert ds["layer"].values.tolist() == ["transformer.h.0.mlp.c_fc", "transformer.wte"]
        assert ds["gram_width"].values.tolist() == [32, 32]  # n_embd: the rows of wte
        assert np.isfinite(ds.flq.gram(0, "transformer.wte").values).all()
