"""Figures and tables of persisted metrics (matplotlib, rich)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import xarray as xr


def tl_heatmap(tl: xr.DataArray, out: str | Path, *, title: str | None = None) -> Path:
    """Step × layer heatmap of Target Linearity with labelled axes and a colorbar."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    values = np.asarray(tl.transpose("layer", "step").values, dtype=float)
    steps = [int(s) for s in tl["step"].values]
    layers = [str(name) for name in tl["layer"].values]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.45 * len(steps) + 2.5), 1.0 + 0.5 * len(layers)))
    finite = values[np.isfinite(values)]
    low = float(np.floor(finite.min() * 20) / 20) if finite.size else 0.0
    high = float(finite.max()) if finite.size else 1.0
    image = ax.imshow(values, aspect="auto", cmap="viridis", vmin=low, vmax=max(high, low + 1e-9))
    ax.set_xticks(range(len(steps)), [str(s) for s in steps], rotation=45, ha="right")
    ax.set_yticks(range(len(layers)), layers)
    ax.set_xlabel("training step (checkpoint)")
    ax.set_ylabel("layer (input of)")
    ax.set_title(title or "Target Linearity per layer over training")
    for (i, j), value in np.ndenumerate(values):
        if np.isfinite(value) and len(steps) <= 20:
            ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=7,
                    color="white" if value < (low + high) / 2 else "black")
    fig.colorbar(image, ax=ax, label="Target Linearity (R², no intercept)")
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return Path(out)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


_SHORT_LABELS = {
    "target_linearity": "Target Linearity (R², no intercept)",
    "surrogate": "surrogate tr(Y_cᵀ Z Zᵀ Y_c)",
    "alignment": "alignment A ∈ [0, 1]",
}


def _log_spaced(steps: np.ndarray) -> bool:
    positive = steps[steps > 0]
    return positive.size >= 3 and positive.max() / positive.min() >= 100


def metric_curves(
    metrics: xr.Dataset, names: list[str], out: str | Path, *, title: str
) -> Path:
    """One panel per metric, one line per layer, over steps (log axis when log-spaced)."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(names), figsize=(5.2 * len(names), 4.0), squeeze=False)
    steps = metrics["step"].values.astype(float)
    log_axis = _log_spaced(steps)
    colours = plt.cm.viridis(np.linspace(0.0, 0.9, metrics.sizes["layer"]))
    for ax, name in zip(axes[0], names, strict=True):
        for colour, layer in zip(colours, metrics["layer"].values, strict=True):
            values = metrics[name].sel(layer=layer).values
            x = np.where(steps > 0, steps, np.nan) if log_axis else steps
            ax.plot(x, values, marker="o", markersize=3, color=colour, label=str(layer))
        if log_axis:
            ax.set_xscale("log")
        ax.set_xlabel("training step" + (" (log scale; step 0 not shown)" if log_axis else ""))
        ax.set_ylabel(_SHORT_LABELS.get(name, name))
        ax.set_title(name)
        ax.grid(alpha=0.3)
    axes[0][-1].legend(title="layer (input of)", fontsize=8, loc="best")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return Path(out)


def gram_spectrum_figure(top: xr.DataArray, out: str | Path) -> Path:
    """Top eigenvalues of WᵀW over steps, one panel per layer."""
    plt = _pyplot()
    layers = top["layer"].values
    fig, axes = plt.subplots(1, len(layers), figsize=(3.4 * len(layers), 3.4), squeeze=False,
                             sharey=True)
    steps = top["step"].values.astype(float)
    log_axis = _log_spaced(steps)
    for ax, layer in zip(axes[0], layers, strict=True):
        values = top.sel(layer=layer).transpose("step", "eigen").values
        for k in range(values.shape[1]):
            x = np.where(steps > 0, steps, np.nan) if log_axis else steps
            ax.plot(x, values[:, k], color=plt.cm.magma(k / max(1, values.shape[1])),
                    label=f"λ{k + 1}" if k < 3 else None)
        if log_axis:
            ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(str(layer))
        ax.set_xlabel("training step")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("eigenvalue of WᵀW")
    axes[0][0].legend(fontsize=8)
    fig.suptitle("Weight Gram spectrum over training (top eigenvalues)")
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return Path(out)


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
