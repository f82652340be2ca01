"""The Typer application: the ``audit``, ``metrics``, ``show``, ``export``, ``report`` and
``demo`` commands."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from typer.core import TyperOption

from flq_audit.cli import _output
from flq_audit.cli._audit import audit_command
from flq_audit.cli._command import Command
from flq_audit.cli._compare import compare_command
from flq_audit.cli._errors import mapped
from flq_audit.cli._options import QuietOpt
from flq_audit.cli._report import layer_table, report_command
from flq_audit.cli._store import export_command, metrics_command, show_command

if TYPE_CHECKING:
    from typer._click import Context, HelpFormatter  # the click that typer vendors

app = typer.Typer(
    name="flq-audit",
    help="How did each layer's features evolve over training? Audit a checkpoint sequence "
    "into a Zarr store, compute linearization metrics, export them.\n\n"
    "`flq-audit SOURCE [OPTIONS]` is short for `flq-audit audit SOURCE [OPTIONS]`; SOURCE is "
    "a folder of checkpoints or a Hub repo id.\n\n"
    "Exit codes: 0 ok, 1 internal error, 2 usage (or a destructive option refused), "
    "3 input missing, 4 data error, 5 some steps failed (recorded in the store), 6 the system "
    "refused (disk full, permissions, read-only, open files), 7 network, 130 interrupted, "
    "143 terminated (rerun to resume).\n\n"
    "Global options (before the command): --version, --debug (show tracebacks).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    add_completion=True,
)
app.command("audit", cls=Command, short_help="Audit a checkpoint sequence into a Zarr store (the main job).")(
    audit_command)


class MetricsCommand(Command):
    """``metrics``: its help lists the registered groups, loading the registry (built-in
    groups, dask and entry-point plugins) only when the help is shown."""

    def format_help(self, ctx: Context, formatter: HelpFormatter) -> None:
        from flq_audit.metrics import registry

        for param in self.params:
            if param.name == "metric" and isinstance(param, TyperOption):
                param.help = "Comma-separated metric groups: " + ", ".join(registry()) + "."
        super().format_help(ctx, formatter)


app.command("metrics", cls=MetricsCommand)(metrics_command)
app.command("show", cls=Command)(show_command)
app.command("export", cls=Command)(export_command)
app.command("report", cls=Command)(report_command)
app.command("compare", cls=Command)(compare_command)


@app.command("demo", cls=Command)
@mapped
def demo_command(
    workdir: Annotated[Path, typer.Option(help="Where checkpoints, store and outputs go.")] = Path(
        "flq-demo"),
    train_steps: Annotated[int, typer.Option(
        min=1, help="Optimizer steps of the training run (when DIR/checkpoints is absent).")
    ] = 3000,
    quiet: QuietOpt = False,
) -> None:
    """Train the digits MLP recipe, audit it, then report on it into DIR/report (as `report`).

    Training shows its steps and loss on stderr (a bar in a terminal, a line every tenth of
    the run otherwise).
    """
    from flq_audit.demo import run_demo

    with _output.RichProgress(quiet=quiet) as progress:
        result = run_demo(workdir, progress=progress, training=progress.training,
                          train_steps=train_steps)
    tl = result.metrics["target_linearity"]
    _output.stdout.print(_output.metric_table(tl, "Target Linearity (step × layer input)"))
    _output.stdout.print(layer_table(result.metrics))
    _output.stdout.print(result.report.verdict)
    _output.stdout.print(f"store   {result.store}\nnetcdf  {result.netcdf}\nfigure  {result.figure}"
                         f"\npage    {result.report.page}")


__all__ = ["app"]
