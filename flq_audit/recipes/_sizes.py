"""The command line the reproduction recipes share: ``OUT_DIR [--short | --full]``."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from flq_audit.recipes._reproduction import Results, write_results


def parse_size(argv: list[str] | None, *, description: str, default_out: str,
               short: str, full: str) -> tuple[Path, bool]:
    """``(out_dir, full)`` from ``OUT_DIR [--short | --full]`` (``--short`` by default)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("out_dir", nargs="?", default=default_out)
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--short", action="store_true", help=f"{short} (default)")
    group.add_argument("--full", action="store_true", help=full)
    args = parser.parse_args(argv)
    return Path(args.out_dir), bool(args.full)


def size_name(full: bool) -> str:
    return "full" if full else "short"


def command(script: str, full: bool) -> str:
    """How the table says it was made: ``python recipes/SCRIPT OUT --full``."""
    return f"python recipes/{script} OUT --{size_name(full)}"


def fresh_store(store: Path) -> Path:
    """Remove ``store`` if it exists: a rerun rewrites the checkpoints, so it is stale."""
    if store.exists():
        shutil.rmtree(store)
    return store


def finish(out: Path, results: Results) -> Path:
    """Write the results into ``out``, print and return the JSON's path."""
    path = write_results(out, results)
    print(path)
    return path
