"""``index.html``: one self-contained report page (inline CSS and images, no script)."""

from __future__ import annotations

import base64
import json
import os
from html import escape
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from flq_audit._format import human_size
from flq_audit.reading._report import LAYER_COLUMNS, layer_rows

PAGE_NAME = "index.html"

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:2rem auto;max-width:1200px;
padding:0 1rem;color:#1b1b1b;line-height:1.45}
h1{font-size:1.5rem;margin-bottom:.2rem} h2{font-size:1.2rem;margin-top:2rem;
border-bottom:1px solid #ddd;padding-bottom:.2rem}
.sub{color:#555;margin-top:0} .verdict{padding:.7rem 1rem;border-radius:6px;font-weight:600}
.observed{background:#e5f4e8;border-left:5px solid #2e7d32}
.not-observed{background:#fdf0e3;border-left:5px solid #c26a00}
table{border-collapse:collapse;font-size:.9rem;margin:.5rem 0}
th,td{border:1px solid #ddd;padding:.25rem .5rem;text-align:right;vertical-align:top}
th{background:#f4f4f4} td.name,th.name{text-align:left;font-family:ui-monospace,monospace}
figure{margin:1rem 0} img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{color:#555;font-size:.9rem} pre{background:#f7f7f7;padding:.6rem;overflow-x:auto;
font-size:.85rem} .notes li{color:#8a1c1c} code{font-size:.9em}
"""

_CAPTIONS = {
    "target_linearity.png": "Target Linearity of each layer's input at every audited step.",
    "curves.png": "Target Linearity, surrogate and alignment per layer over training.",
    "gram_spectrum.png": "Top eigenvalues of each layer's weight Gram matrix WᵀW over training; "
                         "eigenvalues below λ_max · ε · width (the numerical floor of the stored "
                         "Gram, ε its dtype's machine precision) are rounding noise and are not "
                         "drawn.",
}


def write_page(
    folder: str | Path,
    *,
    metrics: xr.Dataset,
    store: xr.Dataset,
    verdict: str,
    figures: list[Path],
    netcdf: Path | None = None,
    notes: list[str] | None = None,
    findings: list[str] | None = None,
) -> Path:
    """Write ``folder/index.html`` (atomically) and return its path."""
    page = Path(folder) / PAGE_NAME
    html = render_page(metrics=metrics, store=store, verdict=verdict, figures=figures,
                       netcdf=netcdf, notes=notes or [], folder=Path(folder),
                       findings=findings or [])
    partial = page.with_name(f".{page.name}.partial")
    partial.write_text(html, encoding="utf-8")
    os.replace(partial, page)
    return page


def render_page(
    *,
    metrics: xr.Dataset,
    store: xr.Dataset,
    verdict: str,
    figures: list[Path],
    netcdf: Path | None,
    notes: list[str],
    folder: Path,
    findings: list[str] | None = None,
) -> str:
    """The page's HTML: verdict, per-layer table, figures, data link and provenance."""
    from flq_audit import __version__

    source = str(store.attrs.get("source", store.encoding.get("source", "")))
    observed = "→ sequential linearization observed" in verdict
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>flq-audit report: {escape(source)}</title>",
        f"<style>{_CSS}</style></head><body>",
        "<h1>flq-audit report</h1>",
        f'<p class="sub">{escape(source)} · {store.sizes.get("step", 0)} steps · '
        f'{store.sizes.get("layer", 0)} layers · flq-audit {escape(__version__)}</p>',
        '<h2 id="verdict">Verdict</h2>',
        f'<p class="verdict {"observed" if observed else "not-observed"}">{escape(verdict)}</p>',
    ]
    if notes:
        parts.append('<ul class="notes">' + "".join(f"<li>{escape(n.strip())}</li>"
                                                    for n in notes) + "</ul>")
    if findings:
        parts += ['<h2 id="findings">What the data says</h2>',
                  '<ul class="findings">' + "".join(f"<li>{escape(line.strip())}</li>"
                                                    for line in findings) + "</ul>"]
    parts += _layer_section(metrics)
    parts += _figure_section(figures)
    parts += _data_section(netcdf, folder)
    parts += _provenance_section(store)
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _table(header: list[str] | None, rows: list[list[str]], name_columns: int = 1) -> str:
    def cell(tag: str, index: int, value: str) -> str:
        kind = ' class="name"' if index < name_columns else ""
        return f"<{tag}{kind}>{escape(value)}</{tag}>"

    head = ("<thead><tr>" + "".join(cell("th", i, h) for i, h in enumerate(header))
            + "</tr></thead>") if header else ""
    body = "".join("<tr>" + "".join(cell("td", i, v) for i, v in enumerate(row)) + "</tr>"
                   for row in rows)
    return f"<table>{head}<tbody>{body}</tbody></table>"


def _layer_section(metrics: xr.Dataset) -> list[str]:
    from flq_audit.reading._figures import short_labels

    rows = layer_rows(metrics)
    labels = short_labels([row[0] for row in rows])
    if labels == [row[0] for row in rows]:
        table = _table(list(LAYER_COLUMNS), rows)
    else:
        header = [LAYER_COLUMNS[0], "label in figures", *LAYER_COLUMNS[1:]]
        table = _table(header, [[row[0], label, *row[1:]]
                                for row, label in zip(rows, labels, strict=True)], 2)
    return ['<h2 id="layers">Per layer</h2>',
            "<p>TL at the first and last done step, its chance floor rank/N at the last step "
            "(marked <em>at floor</em> where the floor is 0.5 or more, or TL does not exceed "
            "it: such a TL says little about the targets), t90, and the last values of "
            "surrogate, alignment and NC1 (— where there is none).</p>", table]


def _figure_section(figures: list[Path], captions: dict[str, str] | None = None) -> list[str]:
    parts = ['<h2 id="figures">Figures</h2>']
    for path in figures:
        data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
        caption = (captions or _CAPTIONS).get(Path(path).name, Path(path).name)
        parts.append(f'<figure><img src="data:image/png;base64,{data}" '
                     f'alt="{escape(caption)}"><figcaption>{escape(caption)} '
                     f'(<code>{escape(Path(path).name)}</code>)</figcaption></figure>')
    return parts


def _data_section(netcdf: Path | None, folder: Path) -> list[str]:
    if netcdf is None:
        return []
    href = os.path.relpath(netcdf, folder).replace(os.sep, "/")
    size = human_size(netcdf.stat().st_size if netcdf.exists() else 0)
    return ['<h2 id="data">Data</h2>',
            f'<p><a href="{escape(href)}">{escape(href)}</a> ({size}): NetCDF4 export '
            "of the metrics, coordinates and bookkeeping; open it with "
            f"<code>xarray.open_dataset({escape(repr(href))})</code>.</p>"]


def _json_attr(store: xr.Dataset, name: str) -> Any:
    raw = store.attrs.get(name)
    try:
        return json.loads(raw) if isinstance(raw, str) else raw
    except json.JSONDecodeError:
        return raw


def _provenance_section(store: xr.Dataset) -> list[str]:
    probe = _json_attr(store, "probe") or {}
    fingerprint = store.attrs.get("probe_fingerprint") or probe.get("fingerprint", "—")
    summary = [
        ["source", str(store.attrs.get("source", "—"))],
        ["store written by", f"flq-audit {store.attrs.get('flq_audit_version', '—')}"],
        ["store schema", str(store.attrs.get("schema_version", "—"))],
        ["probe", str(probe.get("name", "none (weights-only store)"))],
        ["probe hash (SHA-256)", str(fingerprint)],
        ["probe samples", str(probe.get("n_samples", "—"))],
    ]
    fl_probe = _json_attr(store, "fl_probe")
    if isinstance(fl_probe, dict):
        summary.append(["FL probe (training set)", f"{fl_probe.get('name', '—')}, "
                        f"{fl_probe.get('n_samples', '—')} samples, SHA-256 "
                        f"{fl_probe.get('fingerprint', '—')}"])
    parts = ['<h2 id="provenance">Provenance</h2>', _table(None, summary, 1)]
    capture = _json_attr(store, "capture_config")
    if capture:
        parts += ["<h3>Capture options</h3>",
                  f"<pre>{escape(json.dumps(capture, indent=2, sort_keys=True))}</pre>"]
    groups = _json_attr(store, "flq_metrics") or {}
    if isinstance(groups, dict) and groups:
        rows = [[name, json.dumps(info.get("params", {}), sort_keys=True)]
                for name, info in sorted(groups.items()) if isinstance(info, dict)]
        parts += ["<h3>Metric parameters</h3>", _table(["group", "parameters"], rows, 2)]
    parts += ["<h3>Checkpoints</h3>", _step_table(store)]
    return parts


def _step_table(store: xr.Dataset) -> str:
    checkpoints = _json_attr(store, "checkpoints") or {}
    steps = [int(s) for s in store["step"].values]
    commits = _coordinate(store, "commit", len(steps))
    labels = _coordinate(store, "label", len(steps))
    rows = []
    for i, step in enumerate(steps):
        info = checkpoints.get(str(step), {}) if isinstance(checkpoints, dict) else {}
        shas = ", ".join(str(sha)[:12] for sha in info.get("sha256", []))
        rows.append([str(step), labels[i], commits[i] or "—",
                     ", ".join(map(str, info.get("files", []))) or "—", shas or "—"])
    table = _table(["step", "label", "commit", "files", "SHA-256 (first 12)"], rows, 5)
    if len(rows) > 20:
        return f"<details><summary>{len(rows)} steps</summary>{table}</details>"
    return table


def _coordinate(store: xr.Dataset, name: str, count: int) -> list[str]:
    if name not in store.coords:
        return [""] * count
    return [str(v) for v in np.asarray(store[name].values).tolist()]


__all__ = ["PAGE_NAME", "render_page", "write_page"]
