"""Output to a pipe: tables whole (no "…", no wrapping), one-line errors, and
``--format tsv|csv|json`` that parse back to the stored numbers. Real subprocesses whose
stdout is a pipe, an 80-column environment, transformer-length layer names and a metric
plugin whose values are in the tens of millions."""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr
from safetensors.torch import save_file

from flq_audit import api
from tests._helpers.cli import cli_env, describe, invoke, run_cli, run_many

pytestmark = pytest.mark.slow

NETS = '''
import torch
from torch import nn


class Attention(nn.Module):
    def __init__(self):
        super().__init__()
        self.query_key_value = nn.Linear(6, 6)


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.attention = Attention()


class Trunk(nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = nn.ModuleList(Block() for _ in range(12))


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.gpt_neox = Trunk()
        self.embed_out = nn.Linear(6, 3)

    def forward(self, x):
        for block in self.gpt_neox.layers:
            x = torch.tanh(block.attention.query_key_value(x))
        return self.embed_out(x)


def make():
    return Net()
'''
PLUGIN = '''
from flq_audit.metrics import Block, MetricSpec, Output


def big(block: Block, options: None) -> tuple[float]:
    m = block.moments
    return (float(m.hh.trace() / m.n) * 1e8 + 0.3456,)


SPEC = MetricSpec(group="big", needs=frozenset({"moments"}),
                  outputs={"big_energy": Output("tens of millions per (step, layer)", units="1")},
                  kernel=big, description="big_energy")
'''
LAYERS = [*(f"gpt_neox.layers.{i}.attention.query_key_value" for i in range(12)), "embed_out"]
STEPS = (0, 10, 20)


def _make_run(root: Path) -> Path:
    import importlib.util

    root.mkdir()
    (root / "nets.py").write_text(NETS)
    spec = importlib.util.spec_from_file_location("pipe_nets", root / "nets.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for step in STEPS:
        torch.manual_seed(step)
        state = {k: v.contiguous() for k, v in module.make().state_dict().items()}
        save_file(state, str(root / f"step_{step}.safetensors"))
    rng = np.random.default_rng(0)
    np.savez(root / "probe.npz", inputs=rng.normal(size=(40, 6)).astype(np.float32),
             targets=rng.integers(0, 3, 40), num_classes=np.int64(3))
    return root


def _plugin_site(root: Path) -> Path:
    site = root / "site"
    info = site / "flq_big-0.1.dist-info"
    info.mkdir(parents=True)
    (site / "flq_big.py").write_text(PLUGIN)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: flq-big\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[flq_audit.metrics]\nbig = flq_big:SPEC\n")
    return site


@pytest.fixture(scope="module")
def piped(tmp_path_factory):
    root = tmp_path_factory.mktemp("piped")
    run = _make_run(root / "run")
    store = root / "S.zarr"
    api.audit(str(run), model=f"{run / 'nets.py'}:make", out=store)
    site = _plugin_site(root)
    path = os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH", "")) if p)
    env = cli_env(PYTHONPATH=path, COLUMNS="80")
    first = run_cli("metrics", store, "--metric", "tl,big", env=env)
    assert first.returncode == 0, describe(first)
    missing = root / ("a-rather-long-folder-name-" * 4) / "missing-store.zarr"
    procs = run_many({  # commands that do not lock the store, beside one that does
        "tsv": ("metrics", store, "--metric", "tl,big", "--format", "tsv"),
        "show": ("show", store, "--format", "csv"),
        "missing": ("metrics", missing),
    }, env=env)
    locking = {
        "csv": ("metrics", store, "--metric", "tl,big", "--format", "csv"),
        "json": ("metrics", store, "--metric", "tl,big", "--format", "json"),
        "alias": ("metrics", store, "--metric", "tl,big", "--json"),
        "report": ("report", store, "--format", "tsv", "--out", root / "report"),
    }
    procs |= {name: run_cli(*args, env=env) for name, args in locking.items()}
    with xr.open_zarr(str(store)) as ds:
        stored = {name: ds[name].load() for name in ("big_energy", "target_linearity")}
    return {"table": first, **procs, "stored": stored, "missing_path": missing, "store": store,
            "root": root}


def test_a_piped_table_holds_every_full_name_and_value_on_one_line(piped):
    out = piped["table"].stdout
    assert "…" not in out
    big = piped["stored"]["big_energy"]
    assert float(big.min()) > 1e7
    lines = out.splitlines()
    for layer in LAYERS:
        row = [line for line in lines if f" {layer} " in line and "big" not in line]
        values = [f"{v:.3f}" for v in big.sel(layer=layer).values]
        assert any(all(v in line for v in values) for line in row), (layer, values, out)


def _parse(text: str, delimiter: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text), delimiter=delimiter))


@pytest.mark.parametrize(("name", "delimiter"), [("tsv", "\t"), ("csv", ",")])
def test_tsv_and_csv_parse_to_the_stored_numbers(piped, name, delimiter):
    proc = piped[name]
    assert proc.returncode == 0, describe(proc)
    rows = _parse(proc.stdout, delimiter)
    for metric, stored in piped["stored"].items():
        mine = {(int(r["step"]), r["layer"]): float(r["value"]) for r in rows
                if r["metric"] == metric}
        assert len(mine) == len(STEPS) * len(LAYERS)
        for step in STEPS:
            for layer in LAYERS:
                want = float(stored.sel(step=step, layer=layer).item())
                assert mine[(step, layer)] == want, (metric, step, layer)


def test_format_json_is_the_json_flag(piped):
    assert piped["json"].returncode == 0, describe(piped["json"])
    assert json.loads(piped["json"].stdout) == json.loads(piped["alias"].stdout)


def test_show_csv_lists_steps_then_layers_in_full(piped):
    proc = piped["show"]
    assert proc.returncode == 0, describe(proc)
    steps_text, layers_text = proc.stdout.split("\n\n")
    steps = _parse(steps_text, ",")
    assert [int(r["step"]) for r in steps] == list(STEPS)
    assert {r["done"] for r in steps} == {"true"}
    layers = _parse(layers_text, ",")
    assert [r["layer"] for r in layers] == LAYERS
    assert {int(r["width"]) for r in layers} == {6}


def test_report_tsv_gives_the_per_layer_values_and_keeps_stdout_clean(piped):
    proc = piped["report"]
    assert proc.returncode == 0, describe(proc)
    rows = _parse(proc.stdout, "\t")
    assert [r["layer"] for r in rows] == LAYERS
    tl = piped["stored"]["target_linearity"]
    for row in rows:
        assert float(row["tl_last"]) == float(tl.sel(layer=row["layer"]).values[-1])
    assert "figure" in proc.stderr and "figure" not in proc.stdout


def test_report_json_lists_layers_verdict_and_figures(piped):
    result = invoke("report", piped["store"], "--format", "json", "--out", piped["root"] / "rj")
    assert result.exit_code == 0, describe(result)
    data = json.loads(result.stdout)
    assert [row["layer"] for row in data["layers"]] == LAYERS
    tl = piped["stored"]["target_linearity"]
    assert [row["tl_first"] for row in data["layers"]] == [
        float(tl.sel(layer=layer).values[0]) for layer in LAYERS]
    assert data["verdict"] and all(Path(p).is_file() for p in data["figures"])


def test_a_piped_error_line_is_never_wrapped(piped):
    proc = piped["missing"]
    assert proc.returncode == 3, describe(proc)
    first = proc.stderr.splitlines()[0]
    assert first.startswith("error:") and str(piped["missing_path"]) in first


@pytest.mark.parametrize("args", [
    ("show",), ("show", "--json"), ("metrics", "--metric", "tl"),
    ("metrics", "--metric", "tl", "--format", "csv"),
], ids=["show", "show-json", "metrics", "metrics-csv"])
def test_a_reader_that_closed_stdout_ends_the_command_quietly_with_exit_0(piped, args):
    """``flq-audit ... | head -1``: the reader is gone before the command writes (its end of
    the pipe is closed at once), so every write meets a broken pipe."""
    from tests._helpers.cli import popen_cli

    proc = popen_cli(args[0], piped["store"], *args[1:], env=cli_env())
    proc.stdout.close()
    _, err = proc.communicate(timeout=180)
    assert proc.returncode == 0, err
    assert err == "", err
