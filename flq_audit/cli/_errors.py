"""Map exceptions to one-line messages and exit codes, in one place.

Exit codes (each error class carries its own as ``exit_code``):

===  =====================================================================================
0    success
1    unexpected internal error (a bug: rerun with ``--debug`` for the traceback)
2    usage error: a malformed option value, or a destructive option refused
3    input missing: source, checkpoint file, store, model spec or probe file not found
4    data error: a checkpoint, probe, model or store that does not fit
5    some steps failed and were recorded in ``error(step)``
6    the system refused: disk full, permission denied, read-only, too many open files
7    network: a download or Hub request failed
130  interrupted (Ctrl-C); the store stays resumable
143  terminated (SIGTERM); the store stays resumable
===  =====================================================================================
"""

from __future__ import annotations

import functools
import os
import signal
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import typer

from flq_audit.cli import _output
from flq_audit.errors import (
    EXIT_DATA_ERROR,
    EXIT_INPUT_MISSING,
    EXIT_NETWORK,
    EXIT_SYSTEM,
    EXIT_USAGE,
    FlqAuditError,
    from_os_error,
    is_network_error,
)

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_STEPS_FAILED = 5
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143

#: Set by ``--debug``: errors are re-raised with their traceback.
DEBUG_ENV = "FLQ_AUDIT_DEBUG"

__all__ = [
    "EXIT_DATA_ERROR", "EXIT_INPUT_MISSING", "EXIT_INTERNAL", "EXIT_INTERRUPTED", "EXIT_NETWORK",
    "EXIT_OK", "EXIT_STEPS_FAILED", "EXIT_SYSTEM", "EXIT_TERMINATED", "EXIT_USAGE",
    "Terminated", "exit_code_for", "mapped",
]

F = TypeVar("F", bound=Callable[..., Any])


class Terminated(KeyboardInterrupt):
    """Raised from the SIGTERM handler: unwinds like Ctrl-C, exits 143."""


def exit_code_for(err: BaseException) -> int:
    """The documented exit code of an exception."""
    if isinstance(err, Terminated):
        return EXIT_TERMINATED
    if isinstance(err, KeyboardInterrupt):
        return EXIT_INTERRUPTED
    if isinstance(err, FlqAuditError):
        return err.exit_code
    if is_network_error(err):
        return EXIT_NETWORK
    if isinstance(err, OSError):
        return from_os_error(err).exit_code
    if isinstance(err, ValueError):
        return EXIT_USAGE
    return EXIT_INTERNAL


def _known(err: BaseException) -> FlqAuditError | None:
    """The error as an FlqAuditError, or None for an unexpected one (a bug)."""
    if isinstance(err, FlqAuditError):
        return err
    if isinstance(err, OSError) or is_network_error(err):
        return from_os_error(err, step=_output.CURRENT.get("step"))
    if isinstance(err, ValueError):
        return FlqAuditError(str(err))
    return None


def _raise_terminated(signum: int, frame: object) -> None:
    raise Terminated()


def _on_sigterm() -> Any:
    """Handle SIGTERM like Ctrl-C (a clean stop); returns the previous handler."""
    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, _raise_terminated)


def mapped(func: F) -> F:
    """Run a command; turn known errors into a one-line message on stderr and an exit code."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        as_json = bool(kwargs.get("as_json")) or kwargs.get("output_format") == "json"
        debug = os.environ.get(DEBUG_ENV) == "1"
        previous = _on_sigterm()
        _output.CURRENT.clear()
        try:
            return func(*args, **kwargs)
        except typer.Exit:
            raise
        except KeyboardInterrupt as err:
            if debug:
                raise
            what = "terminated" if isinstance(err, Terminated) else "interrupted"
            _output.error(f"{what}; finished steps are kept: rerun the same command to resume")
            raise typer.Exit(exit_code_for(err)) from None
        except Exception as err:
            if _output.is_closed_stdout(err):  # `| head`: the reader has all it wanted
                _output.discard_stdout()
                raise typer.Exit(EXIT_OK) from None
            known = _known(err)
            if debug or known is None:
                if not debug:
                    _output.error(f"internal error {type(err).__name__}: {err} "
                                  "(rerun with --debug for the traceback)")
                    raise typer.Exit(EXIT_INTERNAL) from None
                raise
            code = exit_code_for(err)
            if as_json:
                detail = known.to_dict() | {"type": type(err).__name__}
                _output.print_json({"error": detail, "exit_code": code})
            _output.error(str(known))
            raise typer.Exit(code) from None
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)

    return wrapper  # type: ignore[return-value]  # functools.wraps keeps the signature
