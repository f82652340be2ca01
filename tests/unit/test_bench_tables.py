"""The benchmark table of docs/performance.md is regenerated from a saved JSON, between its markers."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
BEFORE = "# Performance\n\nSome text.\n\n## The benchmark table\n\nThe command.\n\n"
AFTER = "\n\n## What runs where\n\nMore text | with a pipe.\n"
MACHINE = {"cpu": "Test CPU 9000", "cores": 2, "ram_gib": 23.5, "python": "3.11.7",
           "torch": "2.13.0", "numpy": "2.4.6", "zarr": "3.1.6"}


def _tables():
    spec = importlib.util.spec_from_file_location("_tables", BENCH / "_tables.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _summary(median: float, low: float, high: float) -> dict:
    return {"median": median, "min": low, "max": high, "values": [low, median, high]}


def _result() -> dict:
    load = {"before": [1.3, 1.0, 0.9], "after": [6.3, 2.0, 1.0]}
    rows = [
        {"id": "a", "what": "digits audit vs hand loop, CPU", "unit": "s",
         "flq_audit": _summary(3.17, 3.1, 3.3), "baseline": _summary(1.57, 1.5, 1.6),
         "baseline_what": "", "ratio": _summary(2.02, 1.91, 2.15),
         "goal": {"on": "ratio", "op": "<=", "value": 1.3, "text": "≤ 1.3"}, "met": False,
         "load_average": load},
        {"id": "c·rss", "what": "neox peak RSS", "unit": "MiB",
         "flq_audit": _summary(1559.0, 1500.0, 1600.0), "baseline": _summary(1008.0, 1008.0, 1008.0),
         "baseline_what": "hand loop", "ratio": _summary(1.55, 1.5, 1.6),
         "goal": {"on": "ratio", "op": "<=", "value": 1.1, "text": "≤ 1.1"}, "met": False,
         "load_average": load},
        {"id": "e·diff", "what": "largest difference", "unit": "",
         "flq_audit": _summary(1.23e-9, 1.23e-9, 1.23e-9), "baseline": None, "ratio": None,
         "goal": {"on": "flq_audit", "op": "<=", "value": 1e-12, "text": "≤ 1e-12"},
         "met": False, "load_average": load},
        {"id": "g", "what": "workers", "unit": "s", "flq_audit": _summary(20.0, 19.0, 21.0),
         "baseline": _summary(22.0, 22.0, 23.0), "baseline_what": "sequential",
         "ratio": _summary(1.1, 1.05, 1.2),
         "goal": {"on": "ratio", "op": ">=", "value": 1.0, "text": "≥ 1"}, "met": True,
         "load_average": {"before": [0.5, 0, 0], "after": [0.26, 0, 0]}},
        {"id": "h", "what": "row h", "error": "RuntimeError: show exited 1",
         "load_average": load},
    ]
    return {"mode": "quick", "repeats": 3, "threads": 1, "started": "2026-12-07 15:00 UTC",
            "machine": MACHINE, "rows": rows}


EXPECTED_ROWS = [
    "| a | digits audit vs hand loop, CPU | 3.17 s [3.1–3.3] | 1.57 s [1.5–1.6] "
    "| 2.02 [1.91–2.15] | ≤ 1.3 | no | 1.3 → 6.3 |",
    "| c·rss | neox peak RSS | 1,559 MiB [1,500–1,600] | 1,008 MiB (hand loop) "
    "| 1.55 [1.5–1.6] | ≤ 1.1 | no | 1.3 → 6.3 |",
    "| e·diff | largest difference | 1.23e-09 |  |  | ≤ 1e-12 | no | 1.3 → 6.3 |",
    "| g | workers | 20 s [19–21] | 22 s [22–23] (sequential) | 1.1 [1.05–1.2] | ≥ 1 | yes "
    "| 0.5 → 0.3 |",
    "| h | row h | error: RuntimeError: show exited 1 | | | | | |",
]


def _doc(tables) -> str:
    return f"{BEFORE}{tables.BEGIN}\nan old table\n{tables.END}{AFTER}"


def _between(text: str, tables) -> list[str]:
    return text.split(tables.BEGIN)[1].split(tables.END)[0].strip("\n").splitlines()


def test_every_row_with_its_numbers_and_the_text_around_unchanged(tmp_path):
    tables = _tables()
    saved = tmp_path / "benchmark.json"
    saved.write_text(json.dumps(_result()))
    doc = tmp_path / "performance.md"
    doc.write_text(_doc(tables))
    tables.write_tables(saved, doc)
    text = doc.read_text()
    assert text.startswith(BEFORE + tables.BEGIN + "\n")
    assert text.endswith("\n" + tables.END + AFTER)
    lines = _between(text, tables)
    assert "an old table" not in text
    assert lines[0].startswith("`python benchmarks/run.py --quick` (3 paired runs per row, "
                               "1 torch thread each side), 2026-12-07 15:00 UTC: Test CPU 9000, "
                               "2 cores, 23.5 GiB, Python 3.11.7, torch 2.13.0, numpy 2.4.6")
    assert lines[2].startswith("| row | what | flq-audit | baseline |")
    assert lines[4:] == EXPECTED_ROWS


def test_regenerating_twice_gives_the_same_page(tmp_path):
    tables = _tables()
    once = tables.regenerate(_doc(tables), _result())
    assert tables.regenerate(once, _result()) == once


def test_the_command_regenerates_from_a_saved_json(tmp_path):
    saved = tmp_path / "benchmark.json"
    saved.write_text(json.dumps(_result()))
    doc = tmp_path / "performance.md"
    tables = _tables()
    doc.write_text(_doc(tables))
    subprocess.run([sys.executable, str(BENCH / "run.py"), "--tables-only", str(saved), "--doc",
                    str(doc)], check=True, cwd=tmp_path)
    assert _between(doc.read_text(), tables)[4:] == EXPECTED_ROWS


@pytest.mark.parametrize("text", ["no markers at all\n", "<!-- /bench:table --> <!-- bench:table -->",
                                  "<!-- bench:table --> <!-- bench:table --> <!-- /bench:table -->"])
def test_a_page_without_one_pair_of_markers_is_refused(text):
    with pytest.raises(ValueError, match="bench:table"):
        _tables().regenerate(text, _result())
