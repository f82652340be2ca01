"""Figures and tables of persisted metrics (matplotlib, rich)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from flq_audit.fl_steps import diagnose_fl_steps

LAYER_COLUMNS = ("layer", "TL first", "TL last", "floor last", "t90", "surrogate last",
                 "alignment last", "NC1 last")
#: The same columns as machine-readable names (TSV, CSV and JSON output), and whether the
#: layer's TL is at or near its chance floor at the last step (:func:`near_floor`).
LAYER_FIELDS = ("layer", "tl_first", "tl_last", "chance_floor_last", "t90", "surrogate_last",
                "alignment_last", "nc1_last", "near_floor")
#: A chance floor rank/N at least this high leaves TL little room above chance
#: (docs/concepts.md#the-chance-floor-rankn).
NEAR_FLOOR_RATIO = 0.5
FLOOR = "target_linearity_chance_floor"


def _last(metrics: xr.Dataset, name: str, layer: str) -> float:
    kept = metrics[name].sel(layer=layer).dropna("step").values if name in metrics else []
    return float(kept[-1]) if len(kept) else float("nan")


def near_floor(tl: float, floor: float) -> bool:
    """Whether a TL value says little about the targets: its chance floor rank/N is at least
    :data:`NEAR_FLOOR_RATIO`, or TL does not exceed the floor."""
    return bool(np.isfinite(floor) and (floor >= NEAR_FLOOR_RATIO
                                        or (np.isfinite(tl) and tl <= floor)))


def layer_values(metrics: xr.Dataset) -> list[tuple[Any, ...]]:
    """One row per layer (see :data:`LAYER_FIELDS`), unrounded; NaN where a value is missing."""
    tl = metrics["target_linearity"].dropna("step", how="all")
    rows = []
    for layer in tl["layer"].values:
        values = tl.sel(layer=layer).values
        floor = _last(metrics, FLOOR, layer)
        rows.append((str(layer), float(values[0]), float(values[-1]), floor,
                     float(metrics["t90"].sel(layer=layer).item()),
                     _last(metrics, "surrogate", layer), _last(metrics, "alignment", layer),
                     _last(metrics, "nc1", layer), near_floor(float(values[-1]), floor)))
    return rows


def layer_rows(metrics: xr.Dataset) -> list[list[str]]:
    """:func:`layer_values` formatted for people (see :data:`LAYER_COLUMNS`); ``—`` where a
    value is missing; a floor at or near the layer's TL is marked ``(at floor)``."""
    formats = ("{:.3f}", "{:.3f}", "{:.3f}", "{:.0f}", "{:.3g}", "{:.3g}", "{:.3g}")
    rows = []
    for name, *values, flagged in layer_values(metrics):
        cells = [_number(v, f) for v, f in zip(values, formats, strict=True)]
        if flagged:
            cells[2] += " (at floor)"
        rows.append([name, *cells])
    return rows


def floor_layers(metrics: xr.Dataset) -> list[tuple[str, float, float]]:
    """(layer, TL, floor) at the last step of the layers whose TL is at or near its floor."""
    return [(row[0], row[2], row[3]) for row in layer_values(metrics) if row[-1]]


def floor_lines(metrics: xr.Dataset) -> list[str]:
    """What the report says about layers whose TL is at or near the chance floor."""
    flagged = floor_layers(metrics)
    if not flagged:
        return []
    named = ", ".join(f"{layer} (TL {tl:.3f}, floor {floor:.3f})"
                      for layer, tl, floor in flagged[:MAX_NAMED])
    more = f" and {len(flagged) - MAX_NAMED} more" if len(flagged) > MAX_NAMED else ""
    return [f"chance floor: TL of {len(flagged)} layer(s) is at or near its chance floor rank/N "
            f"at the last step (floor ≥ {NEAR_FLOOR_RATIO:g}, or TL ≤ floor), so it says little "
            f"about the targets: {named}{more}; use more probe samples than features, or --pca"]


def _number(value: float, fmt: str = "{:.3f}") -> str:
    return fmt.format(value) if np.isfinite(value) else "—"


def sequential_verdict(metrics: xr.Dataset) -> str:
    """One line: does t90 increase with depth, and is depth ordered at the last step? The
    verdict is "observed" only when the data supports it; otherwise it says why not."""
    return sequential_judgement(metrics)[1]


def sequential_judgement(metrics: xr.Dataset) -> tuple[bool, str]:
    """Whether sequential linearization is observed, and the line that says why."""
    t90_text, rises = t90_order(metrics)
    rho = last_finite(metrics["depth_spearman"]) if "depth_spearman" in metrics else np.nan
    rho_text = "undefined" if not np.isfinite(rho) else f"{rho:.2f}"
    against = [] if np.isfinite(rho) and rho > 0.5 else [
        f"ρ {'is undefined' if not np.isfinite(rho) else 'is not above 0.5'} at the last step"]
    steps, holds = depth_order_holds(metrics["target_linearity"])
    if steps.size and not holds[-1]:
        against.append(f"the depth order of TL does not hold at the last step ({steps[-1]}; it "
                       f"holds at {int(holds.sum())} of {steps.size} steps)")
    flagged = floor_layers(metrics)
    if flagged:
        against.append(f"TL of {', '.join(layer for layer, _, _ in flagged[:MAX_NAMED])} is at "
                       "or near the chance floor")
    observed = rises and not against
    text = (f"{t90_text}; Spearman ρ(depth, TL) at the last step = {rho_text} → sequential "
            f"linearization {'observed' if observed else 'not observed'}")
    return observed, text + (f" ({'; '.join(against)})" if against else "")


def last_finite(values: xr.DataArray) -> float:
    kept = values.dropna("step")
    return float(kept.values[-1]) if kept.size else float("nan")


def t90_order(metrics: xr.Dataset) -> tuple[str, bool]:
    """What t90 over depth shows, and whether it increases (never decreasing, rising at
    least once): equal times, or every layer at the first done step, show no order."""
    times = np.asarray(metrics["t90"].values, dtype=float)
    finite = times[np.isfinite(times)]
    if finite.size < 2:
        return "t90 is known for fewer than two layers (no order over depth)", False
    if np.ptp(finite) == 0:
        first = metrics["target_linearity"].dropna("step", how="all")["step"].values
        at_first = first.size > 0 and finite[0] == float(first[0])
        return (f"t90 is step {finite[0]:g} for every layer"
                + (" (the first done step: no layer's TL rises later)" if at_first else "")
                + ", so it shows no order over depth"), False
    if bool(np.all(np.diff(finite) >= 0)):
        return "t90 increases with depth", True
    return "t90 does not increase with depth", False


def report_groups(ds: xr.Dataset | None = None) -> list[str]:
    """The metric groups a report computes: every registered group (that the store ``ds``
    allows: a store without activations or Grams leaves out the groups that need them)."""
    from flq_audit.metrics import registry
    from flq_audit.metrics._engine import supported_groups

    return list(registry()) if ds is None else supported_groups(ds)


def nonfinite_entries(ds: xr.Dataset) -> list[tuple[int, str]]:
    """(step, layer) entries whose weights or stored activations the audit flagged as
    non-finite (NaN or Inf)."""
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
    return [f"left out {len(entries)} (step, layer) entries: their weights or stored "
            "activations hold NaN or Inf, so every metric of them is NaN"] + [
        f"  step {s}, layer {layer}: non-finite weights or activations" for s, layer in entries]


#: Prefix of the rank records the ``tl`` metric group stores (``_rank``, ``_cutoff`` ...).
TL_RECORDS = "target_linearity"
#: TL differences below this count as ties in the depth order (float32 activations give TL
#: to about 2e-7).
ORDER_TOLERANCE = 1e-6
#: At most this many steps or (step, layer) entries are named in one sentence.
MAX_NAMED = 8


def depth_order_holds(tl: xr.DataArray) -> tuple[np.ndarray, np.ndarray]:
    """(steps, holds): the steps with at least two finite layers and whether TL is
    non-decreasing with depth at each (every deeper layer at least as linear, up to
    :data:`ORDER_TOLERANCE`)."""
    values = np.asarray(tl.transpose("step", "layer").values, dtype=float)
    steps = np.asarray(tl["step"].values)
    kept, holds = [], []
    for step, row in zip(steps, values, strict=True):
        finite = row[np.isfinite(row)]
        if finite.size >= 2:
            kept.append(int(step))
            holds.append(bool(np.all(np.diff(finite) >= -ORDER_TOLERANCE)))
    return np.asarray(kept, dtype=np.int64), np.asarray(holds, dtype=bool)


def holding_tail(holds: np.ndarray) -> tuple[int, list[int]] | None:
    """(start, exceptions) of the longest tail over which a per-step property holds, as
    positions: it starts and ends where the property holds, its exceptions are single steps
    (never two in a row) and at most a tenth of the tail (at least one allowed); None when the
    property fails at the last step."""
    n = holds.size
    if n == 0 or not holds[-1]:
        return None
    for start in range(n):
        if not holds[start]:
            continue
        tail = holds[start:]
        misses = np.flatnonzero(~tail)
        isolated = not np.any(np.diff(misses) == 1)
        if isolated and misses.size <= max(1, tail.size // 10):
            return start, [start + int(i) for i in misses]
    raise AssertionError("unreachable: the last step holds")


def _step_list(steps: list[int]) -> str:
    named = [str(s) for s in steps[:MAX_NAMED]]
    more = f" and {len(steps) - MAX_NAMED} more" if len(steps) > MAX_NAMED else ""
    if len(named) == 1 and not more:
        return f"step {named[0]}"
    if more:
        return f"steps {', '.join(named)}{more}"
    return f"steps {', '.join(named[:-1])} and {named[-1]}"


def depth_order_sentence(tl: xr.DataArray) -> str | None:
    """Over which steps TL is non-decreasing with depth ("from step 86 on, except step
    169"); None with fewer than two layers."""
    steps, holds = depth_order_holds(tl)
    if steps.size == 0:
        return None
    what = "the depth order of TL (non-decreasing with depth)"
    span = holding_tail(holds)
    if span is None:
        return (f"{what} does not hold at the last step ({steps[-1]}); it holds at "
                f"{int(holds.sum())} of {steps.size} steps")
    start, misses = span
    if start == 0 and not misses:
        return f"{what} holds at every step ({steps[0]} to {steps[-1]})"
    text = f"{what} holds from step {steps[start]} on"
    if misses:
        text += f", except {_step_list([int(steps[i]) for i in misses])}"
    return text + f" ({steps.size - start - len(misses)} of {steps.size} steps)"


def crossing_lines(metrics: xr.Dataset) -> list[str]:
    """When each layer's TL first reached 50 % and 90 % of its maximum (t50, t90)."""
    names = [n for n in ("t50", "t90") if n in metrics]
    if not names:
        return []
    parts = []
    for layer in metrics[names[0]]["layer"].values:
        times = [float(metrics[n].sel(layer=layer).item()) for n in names]
        parts.append(f"{layer} " + "/".join(f"{t:.0f}" if np.isfinite(t) else "—"
                                              for t in times))
    return [f"{'/'.join(names)} (first step with TL ≥ "
            f"{'/'.join(n[1:] + ' %' for n in names)} of the layer's maximum): "
            + ", ".join(parts)]


def fl_step_lines(ds: xr.Dataset) -> list[str]:
    """Whether the FL replay saw plain SGD steps (fl_r_step ≈ 0) and what that means (the
    rule the audit also warns by: :func:`flq_audit.fl_steps.diagnose_fl_steps`)."""
    if "fl_r_step" not in ds:
        return []
    return list(diagnose_fl_steps(ds["fl_r_step"].transpose("step", "layer").values).lines)


def cutoff_lines(ds: xr.Dataset) -> list[str]:
    """(step, layer) entries whose TL depends on the rank cut-off, by the metrics' own rule
    (:func:`flq_audit.metrics.cutoff_sensitive`: a kept or dropped singular value within a
    factor ``CUTOFF_MARGIN`` of the cut-off); nothing when the store has no rank records."""
    names = [f"{TL_RECORDS}_{part}" for part in ("cutoff", "kept_ratio", "dropped_ratio")]
    if any(name not in ds for name in names):
        return []
    from flq_audit.metrics import cutoff_sensitive
    from flq_audit.metrics._target_linearity import CUTOFF_MARGIN

    records = ds[names].transpose("step", "layer")
    flagged = np.asarray(cutoff_sensitive(records).values, dtype=bool)
    entries = list(zip(*np.nonzero(flagged), strict=True))
    if not entries:
        return []
    steps, layers = records["step"].values, records["layer"].values
    kept = np.asarray(records[names[1]].values, dtype=float)
    dropped = np.asarray(records[names[2]].values, dtype=float)
    rank_name = f"{TL_RECORDS}_rank"
    rank = (np.asarray(ds[rank_name].transpose("step", "layer").values)
            if rank_name in ds else None)
    cutoff = float(np.nanmax(np.asarray(records[names[0]].values, dtype=float)))
    lines = [f"TL depends on the rank cut-off at {len(entries)} (step, layer) entries: a kept "
             f"or dropped singular value lies within a factor {CUTOFF_MARGIN:g} of the "
             f"cut-off ({cutoff:.2g} × σ_max), so a slightly different cut-off changes the rank"]
    for i, j in entries[:MAX_NAMED]:
        rank_text = "" if rank is None else f"rank {int(rank[i, j])}, "
        lines.append(f"  step {int(steps[i])}, layer {layers[j]}: {rank_text}kept "
                     f"{kept[i, j]:.2g}, dropped {dropped[i, j]:.2g} (× σ_max)")
    if len(entries) > MAX_NAMED:
        lines.append(f"  … and {len(entries) - MAX_NAMED} more")
    return lines


def findings(metrics: xr.Dataset, store: xr.Dataset | None = None) -> list[str]:
    """What the data says, one sentence a line: depth order over steps, t50/t90 per layer,
    whether the FL steps were plain SGD, and TL values that depend on the rank cut-off."""
    lines = []
    order = depth_order_sentence(metrics["target_linearity"])
    if order is not None:
        lines.append(order)
    lines += crossing_lines(metrics)
    lines += floor_lines(metrics)
    sources = [metrics] if store is None else [metrics, store]
    for reader in (fl_step_lines, cutoff_lines):
        for ds in sources:
            found = reader(ds)
            if found:
                lines += found
                break
    return lines


def spectrum_floor(store: xr.Dataset | None) -> tuple[float, xr.DataArray | None]:
    """(ε of the stored Gram's dtype, Gram width per layer) for the spectrum's numerical
    floor λ_max · ε · width; (float32's ε, None) without a store."""
    if store is None or "gram" not in store:
        return float(np.finfo(np.float32).eps), None
    eps = float(np.finfo(store["gram"].dtype).eps)
    width = store.get("gram_width", None)
    return eps, width


def write_report(metrics: xr.Dataset, out_dir: str | Path,
                 store: xr.Dataset | None = None) -> list[Path]:
    """All report figures for a computed metrics Dataset (tl, surrogate, gram groups);
    ``store`` gives the Gram dtype and widths that bound the drawn spectrum."""
    from flq_audit.reading._figures import gram_spectrum_figure, metric_curves, tl_heatmap

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [tl_heatmap(metrics["target_linearity"], out / "target_linearity.png")]
    names = [n for n in ("target_linearity", "surrogate", "alignment") if n in metrics]
    paths.append(metric_curves(metrics, names, out / "curves.png",
                               title="Target Linearity, surrogate and alignment per layer"))
    if "gram_top_eigenvalues" in metrics:
        eps, width = spectrum_floor(store)
        paths.append(gram_spectrum_figure(metrics["gram_top_eigenvalues"],
                                          out / "gram_spectrum.png", eps=eps, width=width))
    return paths


__all__ = [
    "FLOOR", "LAYER_COLUMNS", "LAYER_FIELDS", "MAX_NAMED", "NEAR_FLOOR_RATIO", "ORDER_TOLERANCE",
    "TL_RECORDS", "crossing_lines", "cutoff_lines", "depth_order_holds", "depth_order_sentence",
    "findings", "fl_step_lines", "floor_layers", "floor_lines", "holding_tail", "layer_rows",
    "layer_values", "near_floor", "nonfinite_entries", "nonfinite_lines", "report_groups",
    "sequential_verdict", "spectrum_floor", "write_report",
]
