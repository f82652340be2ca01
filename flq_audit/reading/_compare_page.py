"""The comparison's report folder: figures, the verdict table (``verdicts.md``), the combined
NetCDF (``metrics.nc``) and a self-contained ``index.html``."""

from __future__ import annotations

import math
import os
from html import escape
from pathlib import Path
from typing import TYPE_CHECKING

from flq_audit.reading._compare_figures import write_compare_figures
from flq_audit.reading._export import write_netcdf
from flq_audit.reading._folder import NETCDF_NAME
from flq_audit.reading._html import _CSS, PAGE_NAME, _data_section, _figure_section, _table

if TYPE_CHECKING:
    from flq_audit.reading._compare import RunComparison, RunVerdict

VERDICTS_NAME = "verdicts.md"
VERDICT_COLUMNS = ("run", "by", "last step", "sequential", "ρ(depth, TL) last", "t90 rises",
                   "deepest layer", "its TL last")
_CAPTIONS = {
    "tl_by_run.png": "Target Linearity of each layer over training, one panel per run.",
    "depth_profile.png": "Target Linearity over depth at each run's last done step.",
    "crossing_times.png": "t50 and t90 of each layer, one line per run.",
}


def _number(value: float, fmt: str = "{:.3f}") -> str:
    return "—" if value is None or not math.isfinite(value) else fmt.format(value)


def verdict_rows(verdicts: list[RunVerdict]) -> list[list[str]]:
    """The verdict table's rows, as text."""
    return [[v.run, "" if v.by is None else f"{v.by:g}" if isinstance(v.by, float) else str(v.by),
             "—" if v.last_step is None else str(v.last_step),
             "yes" if v.sequential else "no", _number(v.spearman_last, "{:.2f}"),
             "yes" if v.t90_increasing else "no", v.deepest_layer, _number(v.deepest_tl_last)]
            for v in verdicts]


def summary_line(result: RunComparison) -> str:
    """Which runs show sequential linearization, and whose deepest layer ends most linear."""
    held = [v.run for v in result.verdicts if v.sequential]
    text = (f"sequential linearization observed in {len(held)} of {len(result.verdicts)} "
            f"run(s){': ' + ', '.join(held) if held else ''}")
    if result.most_linear is not None:
        best = next(v for v in result.verdicts if v.run == result.most_linear)
        text += (f"; the deepest layer ends most linear in {best.run} "
                 f"(TL {best.deepest_tl_last:.3f} at step {best.last_step})")
    return text


def verdict_markdown(result: RunComparison) -> str:
    header = [c if c != "by" else (result.by or "by") for c in VERDICT_COLUMNS]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in verdict_rows(result.verdicts)]
    lines += ["", summary_line(result) + ".", ""]
    lines += [f"- {v.run}: {v.verdict}" for v in result.verdicts]
    return "\n".join(lines) + "\n"


def _page(result: RunComparison, folder: Path, figures: list[Path], netcdf: Path) -> str:
    from flq_audit import __version__

    runs = [v.run for v in result.verdicts]
    header = [c if c != "by" else (result.by or "by") for c in VERDICT_COLUMNS]
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>flq-audit comparison of {len(runs)} runs</title>",
        f"<style>{_CSS}</style></head><body>",
        "<h1>flq-audit comparison</h1>",
        f'<p class="sub">{len(runs)} runs · {result.metrics.sizes.get("step", 0)} steps · '
        f'{result.metrics.sizes.get("layer", 0)} layers · flq-audit {escape(__version__)}</p>',
        '<h2 id="verdicts">Verdict per run</h2>',
        f"<p>{escape(summary_line(result))}.</p>",
        _table(header, verdict_rows(result.verdicts)),
        "<ul>" + "".join(f"<li><code>{escape(v.run)}</code>: {escape(v.verdict)}</li>"
                         for v in result.verdicts) + "</ul>",
    ]
    parts += _figure_section(figures, _CAPTIONS)
    parts += _data_section(netcdf, folder)
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def write_compare_folder(result: RunComparison, folder: Path) -> Path:
    """Write the report folder of a comparison; refused where a report may not go."""
    from flq_audit.store import check_report_folder
    from flq_audit.store._safety import REPORT_MARKER

    check_report_folder(folder)
    folder.mkdir(parents=True, exist_ok=True)
    figures = write_compare_figures(result.metrics, folder, result.by)
    netcdf = write_netcdf(result.metrics, folder / NETCDF_NAME)
    (folder / VERDICTS_NAME).write_text(verdict_markdown(result), encoding="utf-8")
    page = folder / PAGE_NAME
    partial = page.with_name(f".{page.name}.partial")
    partial.write_text(_page(result, folder, figures, netcdf), encoding="utf-8")
    os.replace(partial, page)
    (folder / REPORT_MARKER).touch()
    result.folder, result.figures = folder, figures
    return folder
