"""The ``flq-audit`` command line: a thin Typer shell over :mod:`flq_audit.api`.

``flq-audit SOURCE [OPTIONS]`` runs the audit (the ``audit`` subcommand); ``metrics``,
``show``, ``export``, ``report`` and ``demo`` work on a store. ``flq-audit --version`` prints
the version without importing the toolkit; ``--debug`` shows tracebacks instead of one-line
errors.
"""

from __future__ import annotations

import os
import sys
from typing import Any

#: click's exit status when a write to stdout found no reader (a broken pipe).
EXIT_BROKEN_PIPE = 1
COMMANDS = {"audit", "metrics", "show", "export", "report", "compare", "demo"}


def main(argv: list[str] | None = None) -> None:
    """Console entry point: ``flq-audit SOURCE ...`` means ``flq-audit audit SOURCE ...``."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] in (["--version"], ["-V"]):
        from flq_audit import __version__

        sys.stdout.write(f"flq-audit {__version__}\n")
        return
    if "--debug" in args:
        args.remove("--debug")
        os.environ["FLQ_AUDIT_DEBUG"] = "1"
    if "--offline" in args:  # huggingface_hub reads this when it is imported
        os.environ["HF_HUB_OFFLINE"] = "1"
    if args and args[0] not in COMMANDS and not args[0].startswith("-"):
        args.insert(0, "audit")
    from flq_audit.cli import _output
    from flq_audit.cli._app import app

    try:
        app(args=args, prog_name="flq-audit")
    except SystemExit as ending:
        # A reader that closed stdout (`| head`) is not an error of the user's: the output
        # still buffered goes nowhere, and a command that ended for that reason exits 0.
        if _output.is_closed_stdout():
            _output.discard_stdout()
            if ending.code in (None, 0, EXIT_BROKEN_PIPE):
                raise SystemExit(0) from None
        raise


def __getattr__(name: str) -> Any:
    if name == "app":
        from flq_audit.cli._app import app

        return app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["app", "main"]
