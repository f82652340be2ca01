"""Steps added to a store: a per-step group computes the new done steps only and keeps the
values stored for the others; what depends on the whole trajectory is recomputed."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import xarray as xr

from flq_audit.metrics._spec import INPUTS, MetricSpec
from flq_audit.metrics._stamp import done_steps, is_complete, stamps


def added_steps(ds: xr.Dataset, spec: MetricSpec, tag: str, param_id: str) -> list[int] | None:
    """The done steps a stored group lacks, when only those need computing: the group is
    ``per_step``, reads the store alone, and is stored complete with the same parameters
    from other done steps. ``None``: compute the whole group."""
    if not spec.per_step or spec.needs - INPUTS:
        return None
    stamp = stamps(ds.attrs).get(tag)
    if (stamp is None or not is_complete(ds, tag) or stamp.get("param_id") != param_id
            or stamp.get("done_steps") is None):
        return None
    before = {int(s) for s in stamp["done_steps"]}
    return [s for s in done_steps(ds) if s not in before]


def whole_outputs(spec: MetricSpec, stored: xr.Dataset) -> list[str]:
    """Outputs recomputed over every step: the spec's trajectory ones, and any without a
    ``step`` dimension (nothing per step to keep)."""
    return [str(v) for v, var in stored.data_vars.items()
            if v in spec.trajectory or "step" not in var.dims]


def merge_steps(ds: xr.Dataset, stored: xr.Dataset, new: xr.Dataset | None,
                whole: xr.Dataset, added: list[int], attrs: Mapping[str, Mapping]
                ) -> xr.Dataset:
    """The group over the store's steps: ``new`` (computed on the ``added`` steps) there,
    ``stored`` on the other done steps, ``whole`` for the trajectory outputs, NaN on the
    steps that are not done. ``attrs``: each output's attributes."""
    step = ds["step"]
    is_new = xr.DataArray(np.isin(step.values, added), dims="step", coords={"step": step})
    done = xr.DataArray(np.asarray(ds["done"].values).astype(bool), dims="step",
                        coords={"step": step})
    out = xr.Dataset(coords={"step": step})
    for name in attrs:
        if name in whole:
            value = whole[name]
        else:
            value = stored[name]
            if new is not None and name in new:
                fresh = new[name].reindex(step=step)
                value = xr.where(is_new, fresh, value).transpose(*stored[name].dims)
            value = value.where(done)
        out[name] = value.astype(np.float64).assign_attrs(dict(attrs[name]))
    return out


__all__ = ["added_steps", "merge_steps", "whole_outputs"]
