"""Reusable option types."""

from __future__ import annotations

from typing import Annotated

import typer

StepsOpt = Annotated[str, typer.Option(
    help="all | first | last | 100,200 | start:stop[:stride] | log:N (keeps first and last).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output on stdout.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars or summaries.")]
StoreArg = Annotated[str, typer.Argument(
    help="A store written by `flq-audit SOURCE`: a local path or an fsspec URL (s3://...).")]
StorageOptionsOpt = Annotated[str | None, typer.Option(
    "--storage-options", metavar="JSON",
    help="fsspec storage options of a URL store, as JSON (credentials, "
    "client_kwargs.endpoint_url ...).")]
