"""docs/reproduction.md shows what the recipes' full runs wrote, not typed numbers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from flq_audit.recipes._reproduction import block, render_table

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "reproduction.md"
RESULTS = sorted((ROOT / "docs" / "results").glob("*.json"))


@pytest.mark.parametrize("path", RESULTS, ids=[p.stem for p in RESULTS])
def test_the_page_block_is_the_rendered_results_file(path: Path) -> None:
    record = json.loads(path.read_text())
    assert record["size"] == "full", f"{path.name} is not from a full run"
    assert block(PAGE.read_text(), record["experiment"]) == render_table(record), (
        f"the {record['experiment']} table is stale: run python recipes/render_reproduction.py")
