"""A user's metric in its own package, found through a real ``flq_audit.metrics`` entry point
by a real ``flq-audit metrics`` subprocess, computed and persisted like a built-in.

The plugin's code and declaration are read from docs/metrics-plugins.md, so the page shows
exactly what this test runs."""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from flq_audit import api
from tests._helpers.cli import cli_env, describe, run_cli

pytestmark = pytest.mark.slow
DOC = Path(__file__).resolve().parents[2] / "docs" / "metrics-plugins.md"


def _block(language: str, first_line: str | None = None) -> str:
    blocks = re.findall(rf"```{language}\n(.*?)```", DOC.read_text(), flags=re.S)
    return next(b for b in blocks if first_line is None or b.startswith(first_line))


def _install_plugin(root: Path) -> Path:
    """What ``pip install`` leaves behind: the module and a ``*.dist-info`` folder."""
    site = root / "site"
    (site / "flq_energy-0.1.dist-info").mkdir(parents=True)
    (site / "flq_energy.py").write_text(_block("python", "# flq_energy.py"))
    info = site / "flq_energy-0.1.dist-info"
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: flq-energy\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(_block("ini"))
    return site


def test_plugin_metric_is_computed_and_stored_like_a_built_in(run_dir, tmp_path):
    store = tmp_path / "s.zarr"
    api.audit(str(run_dir), out=store)
    site = _install_plugin(tmp_path)
    path = os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH", "")) if p)
    env = cli_env(PYTHONPATH=path)

    result = run_cli("metrics", store, "--metric", "energy", env=env)
    assert result.returncode == 0, describe(result)
    assert "feature_energy" in result.stdout
    shown = run_cli("metrics", "--help", env=env)  # the registry is loaded for the help only
    assert shown.returncode == 0, describe(shown)
    assert "metric groups: tl, surrogate, gram, dynamics, nc, energy." in " ".join(
        shown.stdout.split()), shown.stdout

    with xr.open_zarr(str(store), consolidated=False) as ds:
        stored = ds["feature_energy"]
        assert stored.attrs["flq_metric"] == "energy"
        assert stored.attrs["long_name"] == "mean squared norm of the layer's input features"
        assert '"energy"' in ds.attrs["flq_metrics"]
        for s in range(ds.sizes["step"]):
            for j in range(ds.sizes["layer"]):
                w = int(ds["width"].values[j])
                h = ds["activations"].values[s, j, :, :w].astype(np.float64)
                expected = np.einsum("nf,nf->", h, h) / h.shape[0]
                assert float(stored[s, j]) == pytest.approx(expected, rel=1e-12), (s, j)
        np.testing.assert_array_equal(ds.flq.metric("feature_energy").values, stored.values)

    again = run_cli("metrics", store, "--metric", "energy,tl", "--json", env=env)
    assert again.returncode == 0, describe(again)
    assert "feature_energy" in again.stdout and "target_linearity" in again.stdout
    missing = run_cli("metrics", store, "--metric", "energy")  # without the plugin installed
    assert missing.returncode == 2, describe(missing)
    assert "unknown metric" in missing.stderr
