"""One output sink: results on stdout, progress and messages on stderr."""

from __future__ import annotations

import csv
import errno
import json
import os
import select
import sys
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from types import TracebackType
from typing import TYPE_CHECKING, Annotated, Any, Literal

import numpy as np
import typer
from rich.console import Console, ConsoleDimensions
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

from flq_audit._format import human_size
from flq_audit.options import Choice
from flq_audit.sources import CheckpointRef

if TYPE_CHECKING:
    import xarray as xr

#: Line width when the stream is not a terminal: tables are written whole, never cut.
PIPE_WIDTH = 1_000_000

OutputFormat = Literal["table", "tsv", "csv", "json"]


class FormatChoice(Choice):
    """The values of ``--format`` (:data:`OutputFormat`)."""

    table = "table"
    tsv = "tsv"
    csv = "csv"
    json = "json"


FormatOpt = Annotated[FormatChoice, typer.Option(
    "--format", help="table (for reading), tsv or csv (one header line; full-precision numbers), or json "
    "(--json is the same).")]


class _Sink(Console):
    """A console that wraps at the terminal's width, and never when writing to a pipe or file."""

    @property
    def size(self) -> ConsoleDimensions:
        size = super().size
        return size if self.is_terminal else ConsoleDimensions(PIPE_WIDTH, size.height)

    @size.setter
    def size(self, new_size: tuple[int, int]) -> None:
        Console.size.fset(self, new_size)  # type: ignore[attr-defined]  # typeshed: property has no fset

    def on_broken_pipe(self) -> None:
        """The reader of stdout has gone: later output goes nowhere, and the command's error
        handler ends it quietly (Rich itself would exit 1)."""
        self.quiet = True
        discard_stdout()
        raise BrokenPipeError(errno.EPIPE, "the reader of stdout has gone")


stdout = _Sink(highlight=False, soft_wrap=True)
#: Where the running command is (``step``), for error messages.
CURRENT: dict[str, int] = {}
stderr = _Sink(stderr=True, highlight=False)


_STDOUT_DISCARDED = [False]


def is_closed_stdout(err: BaseException | None = None) -> bool:
    """True when stdout's reader has gone (``flq-audit ... | head -1``): ``err``, if given, is
    a broken pipe, and stdout was discarded or polling it reports a pipe with no reader."""
    if err is not None and not (isinstance(err, BrokenPipeError)
                                or getattr(err, "errno", None) == errno.EPIPE):
        return False
    if _STDOUT_DISCARDED[0]:
        return True
    try:
        poller = select.poll()
        poller.register(sys.__stdout__.fileno() if sys.__stdout__ else 1, select.POLLOUT)
        return any(events & select.POLLERR for _fd, events in poller.poll(0))
    except (OSError, ValueError, AttributeError):
        return False


def discard_stdout() -> None:
    """Send what is still buffered for stdout, and any later output, to the null device (as
    Python's documentation advises for SIGPIPE), so that exiting does not fail once more."""
    _STDOUT_DISCARDED[0] = True
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.__stdout__.fileno() if sys.__stdout__ else 1)
        os.close(devnull)
    except (OSError, ValueError):
        pass


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def error(message: str) -> None:
    """``error: message`` on stderr, on one line per line of ``message`` (never wrapped)."""
    stderr.print(f"[bold red]error:[/] {escape(message)}", markup=True, highlight=False,
                 soft_wrap=True)


def warning(message: str) -> None:
    stderr.print(f"[yellow]warning:[/] {escape(message)}", soft_wrap=True)


def output_format(fmt: OutputFormat, as_json: bool = False) -> OutputFormat:
    """The chosen ``--format``; ``--json`` is ``--format json``."""
    if as_json and fmt not in ("table", "json"):
        from flq_audit.errors import OptionError

        raise OptionError(f"--json and --format {fmt} disagree: give one of them")
    return "json" if as_json else fmt


def cell(value: Any) -> str:
    """A value as TSV/CSV text: floats in full precision (``repr``), NaN as ``nan``."""
    if isinstance(value, bool | np.bool_):
        return str(bool(value)).lower()
    if isinstance(value, int | np.integer):
        return str(int(value))
    if isinstance(value, float | np.floating):
        return repr(float(value))
    return "" if value is None else str(value)


def json_value(value: Any) -> Any:
    """A value for JSON: NaN and infinities as ``null``, NumPy scalars as Python ones."""
    if isinstance(value, float | np.floating):
        return float(value) if np.isfinite(value) else None
    return value.item() if isinstance(value, np.generic) else value


def write_rows(header: Sequence[str], rows: Iterable[Sequence[Any]], fmt: OutputFormat) -> None:
    """One table as TSV or CSV on stdout (read back with Python's ``csv`` module)."""
    if fmt == "tsv":
        writer = csv.writer(sys.stdout, delimiter="\t", lineterminator="\n",
                            quoting=csv.QUOTE_MINIMAL)
    else:
        writer = csv.writer(sys.stdout, lineterminator="\n")
    writer.writerow(header)
    writer.writerows([cell(v) for v in row] for row in rows)


def metric_table(values: xr.DataArray, title: str) -> Table:
    """A step × layer table of one metric (layer × step when there are many layers).

    Steps without any value (not audited yet, or failed) are left out and counted in the
    caption: a store lays out every step its source lists."""
    valued = np.isfinite(np.asarray(values.transpose("step", ...).values, dtype=float))
    keep = valued.reshape(valued.shape[0], -1).any(axis=1)
    left_out = int((~keep).sum())
    if left_out and keep.any():
        values = values.isel(step=np.flatnonzero(keep))
        table = metric_table(values, title)
        table.caption = f"{left_out} step(s) without a value (not audited, or failed) left out"
        return table
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


def layers_table(layers: Iterable[tuple[str, str, int, int, str]],
                 roles: Sequence[str | None] | None = None) -> Table:
    """The ``layers`` table of ``show`` and ``--dry-run``: one ``(name, kind, width, Gram
    width, Gram form)`` row a layer, and a ``role`` column when ``roles`` has any."""
    shown = roles is not None and any(roles)
    table = Table(title="layers")
    for column in ("layer", "kind", "width", "gram width", "gram form") + (("role",) * shown):
        table.add_column(column)
    for i, (name, kind, width, gram_width, form) in enumerate(layers):
        role = (roles[i] or "-",) if shown and roles is not None else ()
        table.add_row(name, kind, str(width), str(gram_width), form, *role)
    return table


def _fmt(value: float) -> str:
    return "—" if not np.isfinite(value) else f"{value:.3f}"


@contextmanager
def dask_progress(scheduler: str | None) -> Iterator[None]:
    """One live bar on stderr over every dask computation of a command, cleared at the end:
    in a terminal, and only for the local schedulers (a ``dask.distributed`` cluster has its
    own dashboard). A command computes many graphs; dask's own bar would leave a line each."""
    if not stderr.is_terminal or (scheduler is not None and "://" in scheduler):
        yield
        return
    from dask.callbacks import Callback

    progress = Progress(TextColumn("computing metrics"), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), console=stderr, transient=True)
    task = progress.add_task("metrics", total=0)

    class _Tasks(Callback):
        def _start_state(self, dsk: Any, state: dict[str, Any]) -> None:
            count = sum(len(state.get(kind, ())) for kind in ("ready", "waiting", "running", "finished"))
            progress.update(task, total=(progress.tasks[0].total or 0) + count)

        def _posttask(self, key: Any, result: Any, dsk: Any, state: Any, worker_id: Any) -> None:
            progress.advance(task)

    with progress, _Tasks():
        yield


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
        self._training: TaskID | None = None
        self._step_text = ""
        self._by_worker: dict[str, int] = {}

    def __enter__(self) -> RichProgress:
        self._progress.__enter__()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self._progress.__exit__(exc_type, exc, traceback)

    def training(self, step: int, total_steps: int, loss: float) -> None:
        """A training step is done: a bar in a terminal, else a line every tenth of the run."""
        if self.quiet:
            return
        if self.enabled:
            task = self._training
            if task is None:
                task = self._training = self._progress.add_task("training", total=total_steps)
            self._progress.update(task, completed=step, description=f"training (loss {loss:.4f})")
            if step == total_steps:
                self._progress.remove_task(task)
                self._training = None
            return
        every = max(1, total_steps // 10)
        if step % every == 0 or step == total_steps:
            stderr.print(f"training  step {step}/{total_steps}  loss {loss:.4f}", soft_wrap=True)

    def start(self, total_steps: int, batches_per_step: int) -> None:
        self._steps = self._progress.add_task("steps", total=total_steps)
        self._batches = self._progress.add_task("batches", total=batches_per_step)

    def step_started(self, ref: CheckpointRef) -> None:
        CURRENT["step"] = ref.step
        self._step_text = f"step {ref.step} ({ref.label})"
        self._progress.update(self._steps, description=self._step_text)
        self._progress.reset(self._batches)

    def downloaded(self, step: int, done: int, total: int) -> None:
        """Bytes of the current step's download, shown in the step bar's description."""
        if self._steps is not None and done:
            self._progress.update(self._steps, description=(
                f"{self._step_text} ↓ {human_size(done)}/{human_size(total)}"))

    def batch_done(self) -> None:
        self._progress.advance(self._batches)

    def step_finished(self, ref: CheckpointRef, error_message: str | None) -> None:
        self._progress.advance(self._steps)
        if error_message and not self.quiet:
            warning(f"step {ref.step} failed and was recorded: {error_message.splitlines()[0]}")

    def step_done_on(self, worker: str, ref: CheckpointRef, status: str) -> None:
        """A distributed audit's step finished on ``worker``: steps per worker in the bar."""
        self._by_worker[worker] = self._by_worker.get(worker, 0) + (status == "written")
        tally = ", ".join(f"{name}: {n}" for name, n in sorted(self._by_worker.items()))
        self._progress.update(self._steps, description=f"steps written by worker ({tally})")


def worker_summary(workers: dict[str, dict[str, list[int]]] | None) -> None:
    """One line per worker of a distributed audit: the steps it wrote and failed."""
    for name, tally in sorted((workers or {}).items()):
        stdout.print(f"  worker {name}: {len(tally['written'])} written, "
                     f"{len(tally['failed'])} failed", soft_wrap=True)
