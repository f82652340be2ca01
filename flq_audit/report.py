"""Figures and tables of persisted metrics (matplotlib, rich)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

LAYER_COLUMNS = ("layer", "TL first", "TL last", "t90", "surrogate last", "alignment last",
                 "NC1 last")
#: The same columns as machine-readable names (TSV, CSV and JSON output).
LAYER_FIELDS = ("layer", "tl_first", "tl_last", "t90", "surrogate_last", "alignment_last",
                "nc1_last")


def layer_values(metrics: xr.Dataset) -> list[tuple[str, float, float, float, float, float, float]]:
    """One row per layer (see :data:`LAYER_COLUMNS`), unrounded; NaN where a value is missing."""
    tl = metrics["target_linearity"].dropna("step", how="all")

    def last(name: str, layer: str) -> float:
        kept = metrics[name].sel(layer=layer).dropna("step").values if name in metrics else []
        return float(kept[-1]) if len(kept) else float("nan")

    rows = []
    for layer in tl["layer"].values:
        values = tl.sel(layer=layer).values
        rows.append((str(layer), float(values[0]), float(values[-1]),
                     float(metrics["t90"].sel(layer=layer).item()), last("surrogate", layer),
                     last("alignment", layer), last("nc1", layer)))
    return rows


def layer_rows(metrics: xr.Dataset) -> list[list[str]]:
    """:func:`layer_values` formatted for people; ``—`` where a value is missing."""
    formats = ("{:.3f}", "{:.3f}", "{:.0f}", "{:.3g}", "{:.3g}", "{:.3g}")
    return [[name, *(_number(v, f) for v, f in zip(values, formats, strict=True))]
            for name, *values in layer_values(metrics)]


def _number(value: float, fmt: str = "{:.3f}") -> str:
    return fmt.format(value) if np.isfinite(value) else "—"


def __getattr__(name: str) -> Any:
    """The figure functions, imported on first use (matplotlib stays out of CLI start-up)."""
    if name in ("gram_spectrum_figure", "metric_curves", "tl_heatmap"):
        from flq_audit import figures

        return getattr(figures, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def sequential_verdict(t90: xr.DataArray, spearman_last: float) -> str:
    """One line: does t90 increase with depth, and how is depth ordered at the last step?"""
    times = t90.values.astype(float)
    finite = times[np.isfinite(times)]
    monotone = finite.size >= 2 and bool(np.all(np.diff(finite) >= 0))
    order = "increases" if monotone else "does not increase"
    return (f"t90 {order} with depth; Spearman ρ(depth, TL) at the last step = "
            f"{spearman_last:.2f} → sequential linearization "
            f"{'observed' if monotone and spearman_last > 0.5 else 'not observed'}")


def report_groups() -> list[str]:
    """The metric groups a report computes: every registered group."""
    from flq_audit.metrics import registry

    return list(registry())


def nonfinite_entries(ds: xr.Dataset) -> list[tuple[int, str]]:
    """(step, layer) entries whose weights the audit flagged as non-finite (NaN or Inf)."""
    if "nonfinite" not in ds:
        return []
    flags = np.asarray(ds["nonfinite"].transpose("step", "layer").values, dtype=bool)
    steps, layers = ds["step"].values, ds["layer"].values
    return [(int(steps[i]), str(layers[j])) for i, j in zip(*np.nonzero(flags), strict=True)]


def nonfinite_lines(ds: xr.Dataset) -> list[str]:
    """What a report says about entries left out of every metric because of their weights."""
    entries = nonfinite_entries(ds)
    if not entries:
        return []
    return [f"left out {len(entries)} (step, layer) entries: their weights hold NaN or Inf, "
            "so every metric of them is NaN"] + [f"  step {s}, layer {layer}: non-finite weights"
                                                 for s, layer in entries]


def write_report(metrics: xr.Dataset, out_dir: str | Path) -> list[Path]:
    """All report figures for a computed metrics Dataset (tl, surrogate, gram groups)."""
    from flq_audit.figures import gram_spectrum_figure, metric_curves, tl_heatmap

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [tl_heatmap(metrics["target_linearity"], out / "target_linearity.png")]
    names = [n for n in ("target_linearity", "surrogate", "alignment") if n in metrics]
    paths.append(metric_curves(metrics, names, out / "curves.png",
                               title="Target Linearity, surrogate and alignment per layer"))
    if "gram_top_eigenvalues" in metrics:
        paths.append(gram_spectrum_figure(metrics["gram_top_eigenvalues"],
                                          out / "gram_spectrum.png"))
    return paths
