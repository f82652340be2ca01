"""Which lazy computations make up each metric group, and how their results are named."""

from __future__ import annotations

import xarray as xr

from flq_audit.metrics._collapse import classifier_collapse_dataset, collapse_dataset
from flq_audit.metrics._dynamics import dynamics_dataset
from flq_audit.metrics._gram import gram_dataset
from flq_audit.metrics._lazy import layer_moments
from flq_audit.metrics._surrogate import surrogate_dataset
from flq_audit.metrics._target_linearity import target_linearity_dataset

#: Metric groups the CLI and API accept, with what each stores.
METRICS: dict[str, str] = {
    "tl": "target_linearity (+ n_samples, n_features, rank, chance_floor)",
    "surrogate": "surrogate, surrogate_per_class, norm, alignment",
    "gram": "gram_top_eigenvalues, gram_effective_rank, gram_stable_rank, gram_drift, "
    "gram_cosine_to_final",
    "dynamics": "t50, t90 (per layer), depth_spearman, tl_gap (per step), tl_chance_corrected",
    "nc": "nc1, nc2_equinorm, nc2_equiangularity, nc2_etf_error, nc_n_classes (class probes); "
    "nc3, nc4 per step for the classifier layer",
}
#: Groups whose values depend on the TL parameters (pca, ridge): stored with a suffix.
PARAMETRISED = ("tl", "dynamics")


def tl_suffix(
    *, pca: int | None, ridge: float, pca_threshold: int, denominator: str = "column"
) -> str:
    """``""`` for the paper's defaults, else e.g. ``"__pca256"`` or ``"__ridge0.1"``."""
    parts = []
    if pca is not None:
        parts.append(f"pca{pca}" + ("" if pca_threshold == 1000 else f"t{pca_threshold}"))
    if ridge:
        parts.append(f"ridge{ridge:g}")
    if denominator == "row":
        parts.append("rowden")
    return "__" + "_".join(parts) if parts else ""


def lazy_groups(
    ds: xr.Dataset, groups: list[str], *, pca: int | None, pca_threshold: int, ridge: float,
    denominator: str = "column",
) -> dict[str, xr.Dataset]:
    """Lazy Datasets of the groups that read the store (TL, surrogate and NC share moments)."""
    moments = layer_moments(ds) if {"tl", "surrogate", "dynamics", "nc"} & set(groups) else None
    out: dict[str, xr.Dataset] = {}
    if "tl" in groups or "dynamics" in groups:
        tl = target_linearity_dataset(
            ds, ridge=ridge, pca=pca, pca_threshold=pca_threshold, moments=moments,
            denominator=denominator,
        )
        out["tl"] = tl.rename({v: f"target_linearity_{v}" for v in tl.data_vars
                               if v != "target_linearity"})
    if "surrogate" in groups:
        out["surrogate"] = surrogate_dataset(ds, moments=moments)
    if "nc" in groups:
        out["nc"] = xr.merge([collapse_dataset(ds, moments=moments),
                              classifier_collapse_dataset(ds, moments=moments)],
                             combine_attrs="drop_conflicts")
    if "gram" in groups:
        out["gram"] = gram_dataset(ds)
    return out


def dynamics_from(tl: xr.Dataset) -> xr.Dataset:
    """The dynamics group, from a computed TL group."""
    return dynamics_dataset(tl["target_linearity"], tl["target_linearity_chance_floor"])


def with_suffix(result: xr.Dataset, suffix: str) -> xr.Dataset:
    return result.rename({v: f"{v.replace('target_linearity', 'target_linearity' + suffix)}"
                          if v.startswith("target_linearity") else f"{v}{suffix}"
                          for v in result.data_vars}) if suffix else result
