"""The benchmark table of docs/performance.md, regenerated from ``benchmarks/run.py``'s JSON.

The table sits between ``<!-- bench:table -->`` and ``<!-- /bench:table -->``; only the text
between the markers is replaced.
"""

from __future__ import annotations

import json
from pathlib import Path

BEGIN, END = "<!-- bench:table -->", "<!-- /bench:table -->"
DOC = Path(__file__).resolve().parent.parent / "docs" / "performance.md"
HEADER = ("| row | what | flq-audit | baseline | ratio median [min–max] | goal | met "
          "| load before → after |\n|---|---|---|---|---|---|---|---|")


def number(value: float) -> str:
    """A figure with three significant digits; thousands grouped; tiny ones in e-notation."""
    if value != 0 and abs(value) < 1e-3:
        return f"{value:.2e}"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.3g}"


def figure(summary: dict | None, unit: str = "") -> str:
    """``median unit [min–max]`` of a summary, or an empty cell."""
    if not summary:
        return ""
    unit = f" {unit}" if unit else ""
    text = f"{number(summary['median'])}{unit}"
    if summary["min"] != summary["max"]:
        text += f" [{number(summary['min'])}–{number(summary['max'])}]"
    return text


def load(entry: dict) -> str:
    """The 1-minute load average before and after the row, if recorded."""
    average = entry.get("load_average") or {}
    if "before" not in average or "after" not in average:
        return ""
    return f"{average['before'][0]:.1f} → {average['after'][0]:.1f}"


def row(entry: dict) -> str:
    """One table line of an entry of the JSON's ``rows``."""
    if "error" in entry:
        return f"| {entry['id']} | {entry['what']} | error: {entry['error']} | | | | | |"
    met = {True: "yes", False: "no", None: ""}[entry.get("met")]
    baseline = figure(entry.get("baseline"), entry.get("unit", ""))
    if baseline and entry.get("baseline_what"):
        baseline += f" ({entry['baseline_what']})"
    cells = [entry["id"], entry["what"], figure(entry.get("flq_audit"), entry.get("unit", "")),
             baseline, figure(entry.get("ratio")), entry["goal"]["text"], met, load(entry)]
    return "| " + " | ".join(cells) + " |"


def table(result: dict) -> str:
    """The markdown between the markers: what was run, on what, then the table."""
    m = result["machine"]
    lines = [f"`python benchmarks/run.py --{result['mode']}` ({result['repeats']} paired runs "
             f"per row, {result['threads']} torch thread each side), {result['started']}: "
             f"{m['cpu']}, {m['cores']} cores, {m['ram_gib']} GiB, Python {m['python']}, "
             f"torch {m['torch']}, numpy {m['numpy']}, zarr {m['zarr']}.", "", HEADER]
    lines += [row(entry) for entry in result["rows"]]
    return "\n".join(lines)


def regenerate(text: str, result: dict) -> str:
    """``text`` with the part between the markers replaced by the table of ``result``."""
    if text.count(BEGIN) != 1 or text.count(END) != 1 or text.index(BEGIN) > text.index(END):
        raise ValueError(f"expected one {BEGIN} … {END} pair")
    head, rest = text.split(BEGIN)
    _, tail = rest.split(END)
    return f"{head}{BEGIN}\n{table(result)}\n{END}{tail}"


def write_tables(json_path: Path, doc: Path = DOC) -> None:
    """Regenerate the tables of ``doc`` from a saved result."""
    result = json.loads(json_path.read_text())
    doc.write_text(regenerate(doc.read_text(), result))
