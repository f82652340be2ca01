"""The reproduction tables: verdicts from tolerances, files written, page blocks replaced."""

from __future__ import annotations

import json

import pytest

from flq_audit.recipes._reproduction import (
    Comparison,
    Results,
    block,
    render_table,
    replace_block,
    update_page,
    write_results,
)


def test_verdict_follows_the_tolerance_unless_given() -> None:
    assert Comparison("a", 1.75, 1.7425, "exact", tolerance=0.01).decided() == "reproduced"
    assert Comparison("a", 1.80, 1.7425, "exact", tolerance=0.01).decided() == "differs"
    assert Comparison("a", float("nan"), 1.0, tolerance=0.5).decided() == "differs"
    assert Comparison("a", 0.3, 0.5, verdict="same direction").decided() == "same direction"
    assert Comparison("a", "unrolls", "unrolls", "qualitative").decided() == "not compared"
    with pytest.raises(ValueError, match="kind"):
        Comparison("a", 1.0, 1.0, kind="guessed")


def test_results_round_trip_into_a_page(tmp_path) -> None:
    results = Results("E5", "staircase", "full", "python recipes/x.py out --full",
                      rows=[Comparison("MSE w32", 1.74251, 1.7425, "exact", tolerance=1e-3),
                            Comparison("‖y−ŷ‖ w32 | end", 41.0, 42.0, tolerance=2.0)])
    path = write_results(tmp_path / "run", results)
    record = json.loads(path.read_text())
    assert [r["verdict"] for r in record["rows"]] == ["reproduced", "reproduced"]
    table = render_table(record)
    assert "| MSE w32 | 1.7425 | 1.7425 | exact ± 0.001 | reproduced |" in table
    assert "\\|" in table  # a bar inside a cell does not split the row
    assert (tmp_path / "run" / "results.md").read_text().startswith("# E5: staircase")
    page = tmp_path / "page.md"
    page.write_text("intro\n<!-- repro:E5 -->\nold\n<!-- /repro:E5 -->\nafter\n")
    assert update_page(page, [path]) == ["E5"]
    assert block(page.read_text(), "E5") == table
    assert page.read_text().endswith("<!-- /repro:E5 -->\nafter\n")


@pytest.mark.parametrize("text", ["nothing here", "<!-- /repro:E5 --> <!-- repro:E5 -->",
                                  "<!-- repro:E5 --> <!-- repro:E5 --> <!-- /repro:E5 -->"])
def test_a_page_without_one_ordered_block_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="repro:E5"):
        replace_block(text, "E5", "body")
