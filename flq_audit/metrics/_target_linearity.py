"""Target Linearity over a store: the ``tl`` spec and its lazy (dask) Dataset."""

from __future__ import annotations

import xarray as xr

from flq_audit.errors import MetricError, OptionError
from flq_audit.metrics._graph import GroupContext, group_dataset
from flq_audit.metrics._kernels.target_linearity import _target_linearity_compute
from flq_audit.metrics._options import TLOptions
from flq_audit.metrics._spec import Block, MetricSpec, Output

REFERENCE = "docs/concepts.md#target-linearity"
OUTPUTS = {
    "target_linearity": Output("Target Linearity (in-sample R² of a no-intercept linear fit)",
                               "1", reference=REFERENCE),
    "target_linearity_n_samples": Output("probe samples the fit rests on"),
    "target_linearity_n_features": Output("features entering the fit"),
    "target_linearity_rank": Output("numerical rank of HᵀH"),
    "target_linearity_chance_floor": Output(
        "expected TL of target-independent features (rank / n_samples)", "1",
        reference="docs/concepts.md#the-chance-floor-rankn"),
}


def tl_kernel(block: Block, options: TLOptions) -> tuple[float, float, float, float, float]:
    """TL, samples, features used, rank and chance floor of one (step, layer)."""
    m = block.moments
    assert m is not None
    tl, rank, used = _target_linearity_compute(
        m, ridge=options.ridge, pca=options.pca, pca_threshold=options.pca_threshold,
        denominator=options.denominator)
    return tl, float(m.n), float(used), float(rank), float(rank) / float(m.n)


def _with_parameters(context: GroupContext) -> xr.Dataset:
    assert context.blocks is not None
    params = {**context.options.to_attrs(), "intercept": "none", "target_centering": "column"}
    out = context.blocks.copy()
    out["target_linearity"] = out["target_linearity"].assign_attrs(params)
    return out


SPEC = MetricSpec(
    group="tl", needs=frozenset({"moments"}), outputs=OUTPUTS, kernel=tl_kernel,
    options=TLOptions, build=_with_parameters,
    description="target_linearity (+ n_samples, n_features, rank, chance_floor)",
)


def target_linearity_dataset(
    ds: xr.Dataset,
    *,
    ridge: float = 0.0,
    pca: int | None = None,
    pca_threshold: int = 1000,
    denominator: str = "column",
    moments: xr.DataArray | None = None,
) -> xr.Dataset:
    """Lazy TL per (step, layer) with the counts it rests on.

    Returns a Dataset with ``target_linearity``, ``n_samples``, ``n_features`` (after PCA),
    ``rank`` and ``chance_floor`` (= rank / n_samples, the expected TL of features
    independent of the targets). Steps that are not done are NaN.
    """
    try:
        options = TLOptions(pca=pca, pca_threshold=pca_threshold, ridge=ridge,
                            denominator=denominator)  # type: ignore[arg-type]
    except OptionError as err:
        raise MetricError(err.message) from None
    out = group_dataset(SPEC, GroupContext(ds, options, shared_moments=moments))
    return out.rename({v: str(v).removeprefix("target_linearity_") for v in out.data_vars})
