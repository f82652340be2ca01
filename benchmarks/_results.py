"""Where the benchmarks put their figures: one JSON object, printed and written to a file."""

from __future__ import annotations

import json
from pathlib import Path


def write_result(result: dict, out: Path) -> str:
    """Write ``result`` as indented JSON to ``out`` (its folder is created) and return the
    text; a long benchmark calls it after each section so a run that stops keeps them."""
    text = json.dumps(result, indent=2)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text + "\n")
    return text
