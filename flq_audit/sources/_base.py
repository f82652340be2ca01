"""Records and protocol shared by every checkpoint source family."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Protocol, runtime_checkable


@dataclass(frozen=True)
class CheckpointRef:
    """One checkpoint of a training run.

    Attributes
    ----------
    step : int
        Training step (or epoch): parsed from the checkpoint's name, or read from inside it.
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
    lfs_sha256, blob_ids : tuple of str
        Per weight file (aligned with ``files``), when the listing gave them all; else empty.
    aux_files : tuple of str
        Config and tokenizer files beside the weights (Hub).
    subfolder : str
        The ``checkpoint-N/`` folder of a revision holding this checkpoint ("" for none).
    extra : dict of str to str
        Source-specific coordinates (e.g. a Hub revision's ``stage`` or ``tokens``; a local
        checkpoint's ``step_from``: how its step was found).
    """

    step: int
    label: str
    location: str
    files: tuple[str, ...]
    fmt: str
    revision: str | None = None
    commit: str | None = None
    size_bytes: int = 0
    lfs_sha256: tuple[str, ...] = field(default=(), compare=False)
    blob_ids: tuple[str, ...] = field(default=(), compare=False)
    aux_files: tuple[str, ...] = field(default=(), compare=False)
    subfolder: str = field(default="", compare=False)
    extra: dict[str, str] = field(default_factory=dict, compare=False, hash=False)


@dataclass(frozen=True)
class LeftOut:
    """An entry of a source that is not audited: its name, why, and what would include it.

    ``include`` names the option that would make it a checkpoint ("" when none would).
    """

    name: str
    reason: str
    include: str = ""


@runtime_checkable
class CheckpointSource(Protocol):
    """A place checkpoints come from: it lists refs and makes their files local.

    Optional abilities are declared by the ``supports_*`` flags; a family that subclasses
    this protocol inherits the default method of each ability it lacks.
    """

    name: ClassVar[str]
    #: ``release(ref)`` frees a written step's downloaded files.
    supports_release: ClassVar[bool] = False
    #: ``duplicates(refs)`` finds byte-identical checkpoints from listings alone.
    supports_duplicates: ClassVar[bool] = False
    #: ``tensor_shapes(ref)`` reads names and shapes without downloading the weights.
    supports_header_shapes: ClassVar[bool] = False
    #: ``config_dir(ref)`` gives the folder of a checkpoint's config/tokenizer files.
    supports_config_dir: ClassVar[bool] = False

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

    def left_out(self) -> list[LeftOut]:
        """Entries the last :meth:`list_refs` saw and did not take as checkpoints (none known)."""
        return []

    def release(self, ref: CheckpointRef) -> bool:
        """Free the ref's local files once its step is written; ``False``: nothing freed."""
        return False

    def duplicates(self, refs: Sequence[CheckpointRef]) -> dict[int, int]:
        """``{step: earlier step}`` of refs whose weight files are identical (none known)."""
        return {}

    def tensor_shapes(self, ref: CheckpointRef) -> dict[str, tuple[int, ...]]:
        """Tensor names and shapes of a checkpoint (from its fetched files by default)."""
        from flq_audit.weights import tensor_shapes

        return tensor_shapes(self.fetch(ref), step=ref.step)

    def config_dir(self, ref: CheckpointRef) -> Path | None:
        """The folder of the ref's config/tokenizer files (beside its first weight file)."""
        folder = Path(ref.files[0]).parent
        return folder if (folder / "config.json").is_file() else None
