"""Target Linearity over a store: the ``tl`` spec and its lazy (dask) Dataset."""

from __future__ import annotations

import xarray as xr

from flq_audit.constants import DEFAULT_PCA_THRESHOLD
from flq_audit.errors import MetricError, OptionError
from flq_audit.metrics._graph import GroupContext, group_dataset
from flq_audit.metrics._kernels.target_linearity import fit_target_linearity
from flq_audit.metrics._lazy import LayerMoments
from flq_audit.metrics._options import TLOptions
from flq_audit.metrics._spec import Block, MetricSpec, Output

REFERENCE = "docs/concepts.md#target-linearity"
RECORDS = "docs/concepts.md#rank-records"
OUTPUTS = {
    "target_linearity": Output("Target Linearity (in-sample R² of a no-intercept linear fit)",
                               "1", reference=REFERENCE),
    "target_linearity_n_samples": Output("probe samples the fit rests on", record=True),
    "target_linearity_n_features": Output("features entering the fit", record=True),
    "target_linearity_rank": Output("numerical rank of HᵀH", record=True),
    "target_linearity_chance_floor": Output(
        "expected TL of target-independent features (rank / n_samples)", "1",
        reference="docs/concepts.md#the-chance-floor-rankn", record=True),
    "target_linearity_cutoff": Output(
        "relative singular-value cut-off of the rank rule (sqrt(rtol))", "1",
        reference=RECORDS, record=True),
    "target_linearity_kept_ratio": Output(
        "smallest kept singular value of H over the largest", "1", reference=RECORDS,
        record=True),
    "target_linearity_dropped_ratio": Output(
        "largest dropped singular value of H over the largest (0: none dropped)", "1",
        reference=RECORDS, record=True),
    "target_linearity_dual": Output(
        "1 where TL was solved in the dual (n × n kernel) form, 0 in the primal (d × d)",
        reference="docs/concepts.md#primal-and-dual-forms", record=True),
}
#: Default factor by which a singular-value ratio must clear the cut-off for a TL value not
#: to depend on it (see :func:`cutoff_sensitive`).
CUTOFF_MARGIN = 10.0


def tl_kernel(block: Block, options: TLOptions) -> tuple[float, ...]:
    """TL, samples, features used, rank, chance floor and rank records of one (step, layer)."""
    m = block.moments
    assert m is not None
    fit = fit_target_linearity(
        m, ridge=options.ridge, pca=options.pca, pca_threshold=options.pca_threshold,
        denominator=options.denominator)
    return (fit.tl, float(m.n), float(fit.n_features), float(fit.rank),
            float(fit.rank) / float(m.n), fit.cutoff, fit.kept_ratio, fit.dropped_ratio,
            float(fit.dual))


def _primal_only_when_projected(options: TLOptions) -> bool:
    return options.pca is None


def cutoff_sensitive(ds: xr.Dataset, *, margin: float = CUTOFF_MARGIN,
                     prefix: str = "target_linearity") -> xr.DataArray:
    """True per (step, layer) where the TL value depends on the rank cut-off: the smallest
    kept or the largest dropped singular value lies within a factor ``margin`` of it, so a
    slightly different ``rtol`` (or float32 rounding) would keep a different rank.

    ``ds`` holds the rank records (``{prefix}_cutoff``, ``_kept_ratio``, ``_dropped_ratio``);
    entries without records are False.
    """
    cutoff = ds[f"{prefix}_cutoff"]
    near_kept = ds[f"{prefix}_kept_ratio"] < cutoff * margin
    near_dropped = ds[f"{prefix}_dropped_ratio"] > cutoff / margin
    return (near_kept | near_dropped).fillna(False).astype(bool).rename("tl_cutoff_sensitive")


def _with_parameters(context: GroupContext) -> xr.Dataset:
    assert context.blocks is not None
    params = {**context.options.to_attrs(), "intercept": "none", "target_centering": "column"}
    out = context.blocks.copy()
    out["target_linearity"] = out["target_linearity"].assign_attrs(params)
    return out


SPEC = MetricSpec(
    group="tl", needs=frozenset({"moments"}), outputs=OUTPUTS, kernel=tl_kernel,
    options=TLOptions, build=_with_parameters,
    description="target_linearity (+ n_samples, n_features, rank, chance_floor, cutoff, "
                "kept_ratio, dropped_ratio, dual)",
    dual=_primal_only_when_projected, qr=_primal_only_when_projected, per_step=True,
)


def target_linearity_dataset(
    ds: xr.Dataset,
    *,
    ridge: float = 0.0,
    pca: int | None = None,
    pca_threshold: int = DEFAULT_PCA_THRESHOLD,
    denominator: str = "column",
    moments: LayerMoments | None = None,
) -> xr.Dataset:
    """Lazy TL per (step, layer) with the counts it rests on.

    Returns a Dataset with ``target_linearity``, ``n_samples``, ``n_features`` (after PCA),
    ``rank``, ``chance_floor`` (= rank / n_samples, the expected TL of features
    independent of the targets) and the rank records ``cutoff``, ``kept_ratio``,
    ``dropped_ratio`` and ``dual``. Steps that are not done are NaN.
    """
    try:
        options = TLOptions(pca=pca, pca_threshold=pca_threshold, ridge=ridge,
                            # a str: __post_init__ refuses anything but "column" and "row"
                            denominator=denominator)  # type: ignore[arg-type]  # checked by __post_init__
    except OptionError as err:
        raise MetricError(err.message) from None
    out = group_dataset(SPEC, GroupContext(ds, options, shared_moments=moments))
    return out.rename({v: str(v).removeprefix("target_linearity_") for v in out.data_vars})
