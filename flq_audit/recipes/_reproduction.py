"""The paper-reproduction recipes' results: one table per experiment, the toolkit's value
beside the paper's, and the page that shows them (``docs/reproduction.md``).

A recipe builds :class:`Comparison` rows and calls :func:`write_results`, which writes
``results.json`` and ``results.md`` into its output folder. The page holds each
experiment's table between ``<!-- repro:ID -->`` and ``<!-- /repro:ID -->``;
:func:`update_page` regenerates those blocks from the JSON files of full runs kept in
``docs/results/`` (``python recipes/render_reproduction.py``), so no number on the page is
typed by hand.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

#: How a paper value was obtained: printed exactly by its code, read off a figure
#: (± the reading error), or stated in the text.
KINDS = ("exact", "read off a figure", "text", "qualitative")
VERDICTS = ("reproduced", "same direction", "differs", "not compared")
RESULTS_JSON, RESULTS_MD = "results.json", "results.md"


@dataclass(frozen=True)
class Comparison:
    """One row: a quantity, the toolkit's value, the paper's and how the two compare.

    With numeric values and a ``tolerance`` the verdict follows from
    ``|toolkit − paper| ≤ tolerance`` unless one is given; a qualitative row states its
    verdict (``same direction`` when the trend matches but the values do not).
    """

    quantity: str
    toolkit: float | str | None
    paper: float | str | None
    kind: str = "read off a figure"
    tolerance: float | None = None
    verdict: str | None = None
    note: str = ""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        if self.verdict is not None and self.verdict not in VERDICTS:
            raise ValueError(f"verdict must be one of {VERDICTS}, got {self.verdict!r}")

    def decided(self) -> str:
        """The verdict given, else the one the tolerance implies."""
        if self.verdict is not None:
            return self.verdict
        if (isinstance(self.toolkit, int | float) and isinstance(self.paper, int | float)
                and self.tolerance is not None):
            if not math.isfinite(float(self.toolkit)):
                return "differs"
            close = abs(float(self.toolkit) - float(self.paper)) <= self.tolerance
            return "reproduced" if close else "differs"
        return "not compared"

    def record(self) -> dict[str, Any]:
        return {**asdict(self), "verdict": self.decided()}


@dataclass(frozen=True)
class Results:
    """What one recipe run found: its rows, how it was run, and the figures it drew."""

    experiment: str  # "E5"
    title: str
    size: str  # "short" or "full"
    command: str
    rows: Sequence[Comparison]
    figures: Sequence[str] = ()
    settings: dict[str, Any] = field(default_factory=dict)
    summary: str = ""

    def record(self) -> dict[str, Any]:
        return {"experiment": self.experiment, "title": self.title, "size": self.size,
                "command": self.command, "settings": self.settings, "summary": self.summary,
                "figures": list(self.figures), "rows": [row.record() for row in self.rows]}


def format_value(value: Any) -> str:
    """A table cell: five significant digits, ``–`` for a missing value."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e5):
        return f"{value:.3e}"
    return f"{value:.5g}"


def tolerance_text(row: dict[str, Any]) -> str:
    kind = str(row["kind"])
    return f"{kind} ± {format_value(row['tolerance'])}" if row.get("tolerance") else kind


def render_table(record: dict[str, Any]) -> str:
    """The markdown of one experiment's results (what sits between its page markers)."""
    lines = [f"Run: `{record['command']}` ({record['size']} size).", ""]
    if record.get("summary"):
        lines += [str(record["summary"]), ""]
    lines += ["| quantity | flq-audit | paper | paper value is | verdict | note |",
              "|---|---|---|---|---|---|"]
    for row in record["rows"]:
        cells = [row["quantity"], format_value(row["toolkit"]), format_value(row["paper"]),
                 tolerance_text(row), row["verdict"], row.get("note", "")]
        lines.append("| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |")
    counts = {v: sum(r["verdict"] == v for r in record["rows"]) for v in VERDICTS}
    tally = ", ".join(f"{n} {v}" for v, n in counts.items() if n)
    lines += ["", f"Verdicts: {tally}."]
    return "\n".join(lines)


def write_results(folder: str | Path, results: Results) -> Path:
    """Write ``results.json`` and ``results.md`` into ``folder``; return the JSON's path."""
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    record = results.record()
    (out / RESULTS_JSON).write_text(json.dumps(record, indent=2, allow_nan=True) + "\n")
    (out / RESULTS_MD).write_text(f"# {results.experiment}: {results.title}\n\n"
                                  + render_table(record) + "\n")
    return out / RESULTS_JSON


def _markers(experiment: str) -> tuple[str, str]:
    return f"<!-- repro:{experiment} -->", f"<!-- /repro:{experiment} -->"


def replace_block(text: str, experiment: str, body: str) -> str:
    """``text`` with the block of ``experiment`` replaced by ``body``; refuses a page whose
    markers are missing, repeated or out of order."""
    begin, end = _markers(experiment)
    if text.count(begin) != 1 or text.count(end) != 1 or text.index(begin) > text.index(end):
        raise ValueError(f"the page needs exactly one {begin} ... {end} block, in that order")
    pattern = re.compile(re.escape(begin) + ".*?" + re.escape(end), re.DOTALL)
    return pattern.sub(lambda _: f"{begin}\n{body}\n{end}", text)


def block(text: str, experiment: str) -> str:
    """What sits between the markers of ``experiment`` (stripped)."""
    begin, end = _markers(experiment)
    start, stop = text.index(begin) + len(begin), text.index(end)
    return text[start:stop].strip()


def update_page(page: str | Path, result_files: Iterable[str | Path]) -> list[str]:
    """Regenerate the blocks of ``page`` from results JSON files; returns the experiments."""
    path = Path(page)
    text, done = path.read_text(), []
    for file in result_files:
        record = json.loads(Path(file).read_text())
        text = replace_block(text, record["experiment"], render_table(record))
        done.append(record["experiment"])
    path.write_text(text)
    return done
