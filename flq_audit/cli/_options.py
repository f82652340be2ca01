"""Reusable option types."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

StepsOpt = Annotated[str, typer.Option(
    help="all | first | last | 100,200 | start:stop[:stride] | log:N (keeps first and last).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output on stdout.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars or summaries.")]
StoreArg = Annotated[Path, typer.Argument(help="A store written by `flq-audit SOURCE`.")]
