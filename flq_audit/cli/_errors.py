"""Map exceptions to messages and exit codes, in one place.

Exit codes: 0 success; 1 unexpected internal error; 2 usage error (a malformed option value,
e.g. ``--steps 1:x`` or an unknown ``--metric``); 3 input missing (source, checkpoint, store,
model spec or probe file not found); 4 data error (a checkpoint, probe, model or store that
does not fit); 5 some steps failed and were recorded in ``error(step)``; 130 interrupted
(the store stays resumable).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import typer

from flq_audit.cli import _output
from flq_audit.errors import FlqAuditError, OptionError

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_USAGE = 2
EXIT_INPUT_MISSING = 3
EXIT_DATA_ERROR = 4
EXIT_STEPS_FAILED = 5
EXIT_INTERRUPTED = 130

F = TypeVar("F", bound=Callable[..., Any])


def exit_code_for(err: BaseException) -> int:
    if isinstance(err, KeyboardInterrupt):
        return EXIT_INTERRUPTED
    if isinstance(err, OptionError):
        return EXIT_USAGE
    if isinstance(err, FileNotFoundError):
        return EXIT_INPUT_MISSING
    if isinstance(err, FlqAuditError):
        return EXIT_DATA_ERROR
    if isinstance(err, ValueError):
        return EXIT_USAGE
    return EXIT_INTERNAL


def mapped(func: F) -> F:
    """Run a command; turn known errors into a message on stderr and an exit code."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        as_json = bool(kwargs.get("as_json"))
        try:
            return func(*args, **kwargs)
        except typer.Exit:
            raise
        except KeyboardInterrupt:
            _output.error("interrupted; rerun the same command to resume")
            raise typer.Exit(EXIT_INTERRUPTED) from None
        except (FlqAuditError, FileNotFoundError, ValueError) as err:
            code = exit_code_for(err)
            if as_json:
                detail = err.to_dict() if isinstance(err, FlqAuditError) else {
                    "type": type(err).__name__, "message": str(err)}
                _output.print_json({"error": detail, "exit_code": code})
            _output.error(str(err))
            raise typer.Exit(code) from None

    return wrapper  # type: ignore[return-value]
