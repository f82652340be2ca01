"""A third-party source family and a third-party extension, each one file installed with a
real entry point (a ``*.dist-info`` on the subprocess's ``PYTHONPATH``, as ``pip install``
leaves it), audited through the CLI in a subprocess, and passing their conformance suites.

The files and their declarations are read from docs/extending.md, so the page shows exactly
what this test installs."""

from __future__ import annotations

import importlib
import json
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import xarray as xr
from safetensors.torch import load_file

from flq_audit import sources
from flq_audit.audit import extensions
from flq_audit.testing import ExtensionTests, SourceTests
from tests._helpers.cli import cli_env, describe, run_cli
from tests._helpers.runs import make_run, state_for

pytestmark = pytest.mark.slow
DOC = Path(__file__).resolve().parents[2] / "docs" / "extending.md"
STEPS = (0, 10, 20)
RUN_ID = "3kq9x2"


def _block(language: str, first_line: str) -> str:
    blocks = re.findall(rf"```{language}\n(.*?)```", DOC.read_text(), flags=re.S)
    return next(b for b in blocks if b.startswith(first_line))


def _install(site: Path, dist: str, module: str, group: str, code: str | None = None) -> Path:
    """What ``pip install`` leaves in site-packages: the module and its dist-info."""
    info = site / f"{dist}-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(_block("ini", f"[{group}]"))
    (site / f"{module}.py").write_text(code if code is not None else
                                       _block("python", f"# {module}.py"))
    return site


@pytest.fixture
def site(tmp_path: Path) -> Path:
    """Both packages installed into one folder."""
    site = _install(tmp_path / "site", "flq_wandb", "flq_wandb", "flq_audit.sources")
    return _install(site, "flq_norms", "flq_norms", "flq_audit.extensions")


def _env(site: Path) -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH", "")) if p)
    return cli_env(PYTHONPATH=path)


def make_wandb_run(root: Path, steps: tuple[int, ...] = STEPS) -> Path:
    """A run as W&B artifact downloads leave it: artifacts/model-RUN:vN/ with a manifest,
    the model spec and the probe beside artifacts/ (versions in another order than steps)."""
    make_run(root / "plain", steps)
    for name in ("model_spec.json", "probe.npz"):
        (root / "plain" / name).rename(root / name)
    for version, step in enumerate(reversed(steps)):
        folder = root / "artifacts" / f"model-{RUN_ID}:v{version}"
        folder.mkdir(parents=True)
        weights = folder / "model.safetensors"
        (root / "plain" / f"step_{step}.safetensors").rename(weights)
        (folder / "wandb_manifest.json").write_text(json.dumps({
            "version": 1, "contents": {"model.safetensors": {"size": weights.stat().st_size}},
            "metadata": {"step": step}}))
    (root / "plain").rmdir()
    return root


# ------------------------------------------------------------------ the source, through the CLI
def test_no_built_in_family_reads_the_wandb_layout(tmp_path):
    run = make_wandb_run(tmp_path / "run")
    result = run_cli(run, "--out", tmp_path / "s.zarr")
    assert result.returncode == 3, describe(result)
    assert "no checkpoints found" in result.stderr
    assert not (tmp_path / "s.zarr").exists()


def test_the_installed_family_audits_the_wandb_run_through_the_cli(site, tmp_path):
    run = make_wandb_run(tmp_path / "run")
    store = tmp_path / "s.zarr"
    result = run_cli(run, "--out", store, "--json", env=_env(site))
    assert result.returncode == 0, describe(result)
    assert json.loads(result.stdout)["written"] == list(STEPS)
    labels = [f"model-{RUN_ID}:v{len(STEPS) - 1 - i}" for i in range(len(STEPS))]
    with xr.open_zarr(str(store), consolidated=False) as ds:
        assert ds.attrs["source"] == f"wandb:{run.resolve()}"
        assert ds["step"].values.tolist() == list(STEPS)
        assert ds["label"].values.tolist() == labels
        for step in STEPS:  # independent: the Grams of the weights as saved
            for name, tensor in state_for(step).items():
                layer = name.removesuffix(".weight")
                if not name.endswith(".weight") or layer not in ds["layer"].values:
                    continue
                w = tensor.double().numpy()
                np.testing.assert_allclose(ds.flq.gram(step, layer).values, w.T @ w,
                                           rtol=1e-5, atol=1e-6)


def test_a_broken_source_plugin_is_named_in_one_line(tmp_path):
    site = _install(tmp_path / "site", "flq_broken", "flq_broken", "flq_audit.sources",
                    code="import flq_not_installed\n")
    (site / "flq_broken-0.1.dist-info" / "entry_points.txt").write_text(
        "[flq_audit.sources]\nbroken = flq_broken:Source\n")
    result = run_cli(make_run(tmp_path / "run"), "--out", tmp_path / "s.zarr", env=_env(site))
    assert result.returncode == 4, describe(result)
    assert "Traceback" not in result.stderr
    assert ("the source plugin 'broken' (flq_broken:Source) of the distribution flq_broken 0.1 "
            "could not be loaded: ModuleNotFoundError: No module named 'flq_not_installed'"
            in " ".join(result.stderr.split())), result.stderr
    assert not (tmp_path / "s.zarr").exists()


# ------------------------------------------------------------------ the extension, through the CLI
def test_the_installed_extension_is_enabled_with_extension_name(site, run_dir, tmp_path):
    store = tmp_path / "s.zarr"
    result = run_cli(run_dir, "--extension", "weight_norms", "--out", store, env=_env(site))
    assert result.returncode == 0, describe(result)
    with xr.open_zarr(str(store), consolidated=False) as ds:
        norms = ds["weight_norm"]
        assert norms.dims == ("step", "layer")
        assert norms.attrs["long_name"] == "Frobenius norm of the layer's weight matrix"
        assert json.loads(ds.attrs["capture_config"])["extensions"] == ["weight_norms"]
        for step in STEPS:  # independent: from the checkpoint files
            state = load_file(str(run_dir / f"step_{step}.safetensors"))
            for layer in ds["layer"].values:
                expected = float(torch.linalg.norm(state[f"{layer}.weight"].double()))
                assert float(norms.sel(step=step, layer=layer)) == pytest.approx(expected,
                                                                                  rel=1e-12)

    again = run_cli(run_dir, "--out", store, env=_env(site))  # the extension left out
    assert again.returncode == 4, describe(again)
    assert "was made by a different audit" in again.stderr and "extensions" in again.stderr


@pytest.mark.parametrize(("name", "says"), [
    ("nope", "--extension nope: no such extension; available: weight_norms"),
    ("nonfinite", "--extension nonfinite: 'nonfinite' is built in, always on"),
])
def test_an_extension_that_cannot_be_enabled_is_a_usage_error(site, run_dir, tmp_path, name,
                                                              says):
    result = run_cli(run_dir, "--extension", name, "--out", tmp_path / "s.zarr", env=_env(site))
    assert result.returncode == 2, describe(result)
    assert says in " ".join(result.stderr.split()), result.stderr
    assert not (tmp_path / "s.zarr").exists()


def test_a_broken_extension_plugin_is_named_in_one_line(tmp_path, run_dir):
    site = _install(tmp_path / "site", "flq_bad", "flq_bad", "flq_audit.extensions",
                    code="raise RuntimeError('this plugin is broken')\n")
    (site / "flq_bad-0.1.dist-info" / "entry_points.txt").write_text(
        "[flq_audit.extensions]\nbad = flq_bad:Bad\n")
    result = run_cli(run_dir, "--extension", "bad", "--out", tmp_path / "s.zarr", env=_env(site))
    assert result.returncode == 2, describe(result)
    assert "Traceback" not in result.stderr
    assert ("--extension bad: the entry point bad = flq_bad:Bad of the distribution flq_bad 0.1 "
            "could not be loaded: RuntimeError: this plugin is broken"
            in " ".join(result.stderr.split())), result.stderr


# ------------------------------------------------------------------ the conformance suites
@pytest.fixture
def plugin(site, monkeypatch):
    """``plugin(module)``: the installed module, imported in this process."""
    monkeypatch.syspath_prepend(str(site))

    def load(module: str) -> Any:
        return importlib.import_module(module)

    return load


class TestWandbArtifacts(SourceTests):
    @pytest.fixture
    def source_spec(self, plugin, tmp_path, monkeypatch) -> str:
        monkeypatch.setattr(sources, "SOURCE_FAMILIES", dict(sources.SOURCE_FAMILIES))
        cls = plugin("flq_wandb").WandbArtifacts
        sources.register_source(cls, before=cls.before)
        return str(make_wandb_run(tmp_path / "run"))

    @pytest.fixture
    def source(self, plugin, source_spec):
        return plugin("flq_wandb").WandbArtifacts(source_spec)

    @pytest.fixture
    def expected_steps(self) -> tuple[int, ...]:
        return STEPS

    def expected_state(self, step: int):
        return state_for(step)


class TestWeightNorms(ExtensionTests):
    @pytest.fixture
    def extension(self, plugin):
        return plugin("flq_norms").WeightNorms()


class TestWeightNormsWeightsOnly(TestWeightNorms):
    @pytest.fixture
    def audit_kwargs(self, tmp_path: Path) -> dict[str, Any]:
        return {"source": str(make_run(tmp_path / "run")), "weights_only": True}


def test_registered_by_name_in_this_process(plugin, run_dir, tmp_path, monkeypatch):
    from flq_audit import api
    from flq_audit.options import CaptureOptions

    monkeypatch.setattr(extensions, "_REGISTRY", dict(extensions._REGISTRY))
    extensions.register_extension(plugin("flq_norms").WeightNorms)
    api.audit(str(run_dir), out=tmp_path / "s.zarr",
              capture=CaptureOptions(extensions=("weight_norms",)))
    assert "weight_norm" in xr.open_zarr(str(tmp_path / "s.zarr"), consolidated=False)
