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
    image = ax.imshow(values, aspect="auto", cmap="viridis", vmin=0.0,
                      vmax=max(1e-9, float(np.nanmax(values)) if np.isfinite(values).any() else 1))
    ax.set_xticks(range(len(steps)), [str(s) for s in steps], rotation=45, ha="right")
    ax.set_yticks(range(len(layers)), layers)
    ax.set_xlabel("training step (checkpoint)")
    ax.set_ylabel("layer (input of)")
    ax.set_title(title or "Target Linearity per layer over training")
    for (i, j), value in np.ndenumerate(values):
        if np.isfinite(value) and len(steps) <= 20:
            ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=7,
                    color="white" if value < 0.6 * np.nanmax(values) else "black")
    fig.colorbar(image, ax=ax, label="Target Linearity (R², no intercept)")
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return Path(out)
