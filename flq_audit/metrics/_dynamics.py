"""Per-layer linearization timing and per-step depth ordering from a TL table."""

from __future__ import annotations

import numpy as np
import xarray as xr

from flq_audit.metrics._graph import GroupContext
from flq_audit.metrics._kernels.dynamics import depth_spearman, linearization_time
from flq_audit.metrics._options import TLOptions
from flq_audit.metrics._spec import MetricSpec, Output

REFERENCE = "docs/concepts.md#dynamics"


def dynamics_dataset(tl: xr.DataArray, chance_floor: xr.DataArray | None = None) -> xr.Dataset:
    """t50/t90 per layer, Spearman ρ(depth, TL) and the last-minus-previous TL gap per step,
    and chance-corrected TL (TL − rank/N) per (step, layer)."""
    steps = tl["step"].values.astype(np.float64)
    out = xr.Dataset()
    for fraction in (0.5, 0.9):
        name = f"t{int(fraction * 100)}"
        out[name] = xr.apply_ufunc(
            lambda curve, f=fraction: linearization_time(steps, curve, f), tl,
            input_core_dims=[["step"]], vectorize=True,
        ).assign_attrs(long_name=f"first step with TL ≥ {fraction:.0%} of the layer's max",
                       reference=REFERENCE)
    out["depth_spearman"] = xr.apply_ufunc(
        depth_spearman, tl, input_core_dims=[["layer"]], vectorize=True,
    ).assign_attrs(long_name="Spearman ρ between depth and TL", reference=REFERENCE)
    if tl.sizes["layer"] >= 2:
        out["tl_gap"] = (tl.isel(layer=-1, drop=True) - tl.isel(layer=-2, drop=True)).assign_attrs(
            long_name="TL of the last layer minus the previous one", reference=REFERENCE)
    if chance_floor is not None:
        out["tl_chance_corrected"] = (tl - chance_floor).assign_attrs(
            long_name="TL − rank/N", reference=REFERENCE)
    return out


def _from_tl(context: GroupContext) -> xr.Dataset:
    tl = context.groups["tl"]
    return dynamics_dataset(tl["target_linearity"], tl["target_linearity_chance_floor"])


SPEC = MetricSpec(
    group="dynamics", needs=frozenset({"tl"}), outputs={
        **{name: Output(name) for name in ("t50", "t90", "depth_spearman", "tl_gap")},
        "tl_chance_corrected": Output("tl_chance_corrected", record=True)},
    options=TLOptions, build=_from_tl,
    description="t50, t90 (per layer), depth_spearman, tl_gap (per step), tl_chance_corrected",
)
