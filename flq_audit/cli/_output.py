"""One output sink: results on stdout, progress and messages on stderr."""

from __future__ import annotations

import json
import sys
from types import TracebackType
from typing import Any

import numpy as np
import xarray as xr
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

from flq_audit.sources import CheckpointRef

stdout = Console(highlight=False, soft_wrap=True)
#: Where the running command is (``step``), for error messages.
CURRENT: dict[str, int] = {}
stderr = Console(stderr=True, highlight=False)


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def error(message: str) -> None:
    stderr.print(f"[bold red]error:[/] {escape(message)}", markup=True, highlight=False)


def warning(message: str) -> None:
    stderr.print(f"[yellow]warning:[/] {escape(message)}")


def metric_table(values: xr.DataArray, title: str) -> Table:
    """A step × layer table of one metric (layer × step when there are many layers)."""
    if values.sizes["layer"] > 6 and values.sizes["step"] <= values.sizes["layer"]:
        table = Table(title=title.replace("step × layer", "layer × step"), show_lines=False)
        table.add_column("layer")
        for step in values["step"].values:
            table.add_column(str(int(step)), justify="right")
        for layer in values["layer"].values:
            table.add_row(str(layer), *(_fmt(v) for v in values.sel(layer=layer).values))
        return table
    table = Table(title=title, show_lines=False)
    table.add_column("step", justify="right")
    for layer in values["layer"].values:
        table.add_column(str(layer), justify="right")
    for step in values["step"].values:
        row = values.sel(step=step).values
        table.add_row(str(int(step)), *(_fmt(v) for v in row))
    return table


def _fmt(value: float) -> str:
    return "—" if not np.isfinite(value) else f"{value:.3f}"


class RichProgress:
    """Bars over steps and batches on stderr; silent when quiet or not a terminal."""

    def __init__(self, *, quiet: bool) -> None:
        self.enabled = not quiet and stderr.is_terminal
        self._progress = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
            TimeElapsedColumn(), console=stderr, disable=not self.enabled, transient=True,
        )
        self._steps = self._batches = TaskID(-1)  # real ids from start()
        self.quiet = quiet

    def __enter__(self) -> RichProgress:
        self._progress.__enter__()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self._progress.__exit__(exc_type, exc, traceback)

    def start(self, total_steps: int, batches_per_step: int) -> None:
        self._steps = self._progress.add_task("steps", total=total_steps)
        self._batches = self._progress.add_task("batches", total=batches_per_step)

    def step_started(self, ref: CheckpointRef) -> None:
        CURRENT["step"] = ref.step
        self._progress.update(self._steps, description=f"step {ref.step} ({ref.label})")
        self._progress.reset(self._batches)

    def batch_done(self) -> None:
        self._progress.advance(self._batches)

    def step_finished(self, ref: CheckpointRef, error_message: str | None) -> None:
        self._progress.advance(self._steps)
        if error_message and not self.quiet:
            warning(f"step {ref.step} failed and was recorded: {error_message.splitlines()[0]}")
