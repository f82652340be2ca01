"""Running a reproduction recipe in a test and reading its results table."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any


def run_recipe(main: Callable[[list[str]], Any], out: Path, size: str = "--short",
               ) -> tuple[Path, dict[str, Any], dict[str, dict[str, Any]]]:
    """Run ``main(OUT, size)``; return the folder, ``results.json`` and its rows by quantity."""
    main([str(out), size])
    record = json.loads((out / "results.json").read_text())
    return out, record, {row["quantity"]: row for row in record["rows"]}
