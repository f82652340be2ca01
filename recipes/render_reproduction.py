"""Rewrite the tables of docs/reproduction.md from the results JSON files in docs/results/."""

import sys
from pathlib import Path

from flq_audit.recipes._reproduction import update_page

if __name__ == "__main__":
    root = Path(__file__).resolve().parent.parent
    files = [Path(f) for f in sys.argv[1:]] or sorted((root / "docs" / "results").glob("*.json"))
    print("updated:", ", ".join(update_page(root / "docs" / "reproduction.md", files)) or "nothing")
