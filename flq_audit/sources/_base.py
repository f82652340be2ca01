"""Records and protocol shared by every checkpoint source family."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Protocol, runtime_checkable


@dataclass(frozen=True)
class CheckpointRef:
    """One checkpoint of a training run.

    Attributes
    ----------
    step : int
        Training step (or epoch) parsed from the checkpoint's name.
    label : str
        The name it came from, e.g. ``"step_100.safetensors"`` or ``"checkpoint-500"``.
    location : str
        Where it lives: a local path or a Hub ``repo_id``.
    files : tuple of str
        Weight files that make up the checkpoint (several when sharded).
    revision, commit : str or None
        Hub revision name and pinned commit SHA; ``None`` for local folders.
    fmt : {"safetensors", "pickle"}
        How the weights are serialised.
    """

    step: int
    label: str
    location: str
    files: tuple[str, ...]
    fmt: str
    revision: str | None = None
    commit: str | None = None
    size_bytes: int = 0
    extra: dict[str, str] = field(default_factory=dict, compare=False, hash=False)


@runtime_checkable
class CheckpointSource(Protocol):
    """A place checkpoints come from: it lists refs and makes their files local."""

    name: ClassVar[str]

    @classmethod
    def guess_can_open(cls, spec: str) -> bool:
        """Whether ``spec`` (a CLI SOURCE) looks like something this family opens."""
        ...

    def list_refs(self) -> list[CheckpointRef]:
        """All checkpoints, sorted by step."""
        ...

    def fetch(self, ref: CheckpointRef) -> list[Path]:
        """Local paths of the ref's weight files (downloading them if needed)."""
        ...

    def describe(self) -> str:
        """A short provenance string (path or repo id)."""
        ...
