"""Lazy metrics on a real dask.distributed LocalCluster equal the threaded scheduler's."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from flq_audit import api

pytestmark = [pytest.mark.distributed, pytest.mark.slow]
distributed = pytest.importorskip("dask.distributed")


def test_local_cluster_matches_threads(run_dir, tmp_path):
    api.audit(str(run_dir), out=tmp_path / "a.zarr")
    shutil.copytree(tmp_path / "a.zarr", tmp_path / "b.zarr")
    groups = ["tl", "surrogate", "gram", "nc"]
    threaded = api.compute_metrics(tmp_path / "a.zarr", metrics=groups)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster:
        clustered = api.compute_metrics(tmp_path / "b.zarr", metrics=groups,
                                        scheduler=cluster.scheduler_address)
    for name in ("target_linearity", "surrogate", "alignment", "gram_effective_rank", "nc1"):
        np.testing.assert_allclose(clustered[name].values, threaded[name].values, rtol=1e-12,
                                   equal_nan=True)


def test_an_active_client_computes_the_metrics_when_no_scheduler_is_given(run_dir, tmp_path):
    api.audit(str(run_dir), out=tmp_path / "a.zarr")
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                                  dashboard_address=None) as cluster, \
            distributed.Client(cluster) as client:
        with distributed.get_task_stream(client) as given:
            api.compute_metrics(tmp_path / "a.zarr", metrics=["tl"], recompute=True,
                                scheduler=cluster.scheduler_address)
        with distributed.get_task_stream(client) as active:
            api.compute_metrics(tmp_path / "a.zarr", metrics=["tl"], recompute=True)
    # the metric graph itself runs on the cluster (before: only the store writes did)
    assert len(given.data) > 0
    assert len(active.data) >= 0.9 * len(given.data), (len(active.data), len(given.data))
