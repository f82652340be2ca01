"""A whole audit leaves every module its plan holds as it was: weights, dtypes, modes."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import torch
import xarray as xr
from torch import nn

from flq_audit import api
from flq_audit.options import CaptureOptions, FLOptions, RunOptions
from tests.integration.test_fl_audit import _sgd_run


def _modules(obj: Any, seen: set[int] | None = None) -> list[nn.Module]:
    """Every torch module reachable from ``obj`` through dataclass fields, attributes of
    flq_audit objects, and containers (the plan, its loader, extensions, options)."""
    seen = set() if seen is None else seen
    if id(obj) in seen or isinstance(obj, str | bytes | int | float | torch.Tensor | Path):
        return []
    seen.add(id(obj))
    if isinstance(obj, nn.Module):
        return [obj]
    if isinstance(obj, dict):
        children: list[Any] = list(obj.values())
    elif isinstance(obj, list | tuple | set | frozenset):
        children = list(obj)
    elif dataclasses.is_dataclass(obj) or type(obj).__module__.startswith("flq_audit"):
        children = [getattr(obj, f.name) for f in dataclasses.fields(obj)] if \
            dataclasses.is_dataclass(obj) else []
        children += list(getattr(obj, "__dict__", {}).values())
    else:
        return []
    return [m for child in children for m in _modules(child, seen)]


def _snapshot(module: nn.Module) -> dict[str, Any]:
    tensors = dict(module.state_dict(keep_vars=True))
    return {
        "values": {k: v.detach().clone() for k, v in tensors.items()},
        "dtypes": {k: v.dtype for k, v in tensors.items()},
        "devices": {k: v.device for k, v in tensors.items()},
        "storage": {k: (v.data_ptr(), v._version) for k, v in tensors.items()},
        "params": {k: (p.data_ptr(), p._version, p.dtype)
                   for k, p in module.named_parameters()},
        "training": {n: m.training for n, m in module.named_modules()},
    }


def _assert_unchanged(before: dict[str, Any], after: dict[str, Any]) -> None:
    for key in ("dtypes", "devices", "storage", "params", "training"):
        assert after[key] == before[key], key
    for name, value in before["values"].items():
        assert torch.equal(after["values"][name], value), name


@pytest.mark.parametrize(("activation", "fl"), [("float64", True), ("float32", False)],
                         ids=["fl-float64", "plain-float32"])
def test_an_audit_changes_no_module_of_its_plan(tmp_path, activation, fl):
    run = _sgd_run(tmp_path / "run", steps=3)
    options = FLOptions.from_files("ce", "0.1", str(run / "fl_batches.json")) if fl else None
    plan = api.plan_audit(str(run), out=tmp_path / "s.zarr", fl=options,
                          capture=CaptureOptions(activation_dtype=activation))
    modules = _modules(plan)
    assert modules, "the plan holds its plan-time model"
    before = [_snapshot(m) for m in modules]
    result = api.run_audit(plan, RunOptions(prefetch=fl))
    assert result.written == [0, 1, 2] and not result.failed
    for module, snapshot in zip(modules, before, strict=True):
        _assert_unchanged(snapshot, _snapshot(module))
    ds = xr.open_zarr(tmp_path / "s.zarr")
    assert str(ds.activations.dtype) == activation
    if fl:
        assert float(ds.fl_residual.values[:-1].max()) < 1e-11  # the copy trained, unrounded
