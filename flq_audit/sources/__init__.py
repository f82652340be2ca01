"""Where checkpoints come from: a registry of source families."""

from __future__ import annotations

from flq_audit.errors import CheckpointNotFoundError
from flq_audit.sources._base import CheckpointRef, CheckpointSource
from flq_audit.sources.local import LocalFolderSource
from flq_audit.sources.steps import parse_step, select_steps

#: Families tried in this order by :func:`open_source`.
SOURCE_FAMILIES: dict[str, type] = {}


def register_source(cls: type) -> type:
    """Add a source family to the registry (used by each family module)."""
    SOURCE_FAMILIES[cls.name] = cls
    return cls


register_source(LocalFolderSource)


def open_source(spec: str) -> CheckpointSource:
    """Turn a CLI ``SOURCE`` into a :class:`CheckpointSource` (first family that claims it)."""
    for family in SOURCE_FAMILIES.values():
        if family.guess_can_open(spec):
            return family(spec)
    raise CheckpointNotFoundError(
        f"source {spec!r} does not exist: it is not a local folder"
        f" (known source families: {', '.join(SOURCE_FAMILIES)})",
        path=spec,
        hint="Check the path; Hub repo ids need the Hub source family.",
    )


__all__ = [
    "SOURCE_FAMILIES",
    "CheckpointRef",
    "CheckpointSource",
    "LocalFolderSource",
    "open_source",
    "parse_step",
    "register_source",
    "select_steps",
]
