"""How every command names its values in help and usage, and what shell completion offers.

Typer names an argument ``{source}`` in the usage line and a value ``<str>`` in the help; here
an argument reads ``SOURCE``, an option's value the option's name (``--out OUT``) or the
metavar it declares (``--pooling cls|last|mean``), and options with a fixed set of values
complete them.
"""

from __future__ import annotations

import typing
from collections.abc import Callable, Sequence
from enum import Enum
from typing import Any

from typer.core import TyperArgument, TyperCommand, TyperOption

if typing.TYPE_CHECKING:
    from typer._click import Context  # the click that typer vendors


def choices(choice: type[Enum]) -> tuple[str, ...]:
    """The string values of a choice enum, in declaration order."""
    return tuple(str(member.value) for member in choice)


def complete_from(values: Sequence[str]) -> Callable[[str], list[str]]:
    """Shell completion over a fixed set of values."""
    def complete(incomplete: str) -> list[str]:
        return [value for value in values if value.startswith(incomplete)]

    return complete


def complete_metric_groups(incomplete: str) -> list[str]:
    """Shell completion of ``--metric a,b,...``: the registered groups not yet named."""
    from flq_audit.metrics import registry

    given, _, last = incomplete.rpartition(",")
    named = set(given.split(",")) if given else set()
    prefix = f"{given}," if given else ""
    return [prefix + name for name in registry() if name.startswith(last) and name not in named]


def _no_type(ctx: Context) -> None:
    return None


class Command(TyperCommand):
    """A command whose arguments and option values are named in capitals, as in most CLIs."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for param in self.params:
            if isinstance(param, TyperArgument):
                param.metavar = param.metavar or (param.name or "").upper()
                param.display_type_rich = _no_type  # type: ignore[method-assign]  # "SOURCE", not "SOURCE <str>"
            elif (isinstance(param, TyperOption) and param.metavar is None and param.name
                  and not param.is_flag and not param.count):
                param.metavar = param.name.upper()

    def collect_usage_pieces(self, ctx: Context) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.params:
            if isinstance(param, TyperArgument):
                name = param.metavar or (param.name or "").upper()
                pieces.append(name if param.required else f"[{name}]")
        return pieces


__all__ = ["Command", "choices", "complete_from", "complete_metric_groups"]
