"""Checkpoints in a local folder: one file per step, or one sub-folder per step.

Recognised layouts::

    run/step_100.safetensors   run/epoch_3.pt   run/100.pth   run/model_1000.bin
    run/checkpoint-500/model.safetensors
    run/checkpoint-500/model-00001-of-00002.safetensors + model.safetensors.index.json
    run/checkpoint-500/pytorch_model.bin (or sharded .bin with pytorch_model.bin.index.json)

When one stem exists as safetensors and as a pickle, safetensors is used.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import ClassVar

from flq_audit.constants import (
    NON_WEIGHT_STEMS,
    PICKLE_EXTENSIONS,
    PICKLE_INDEX_FILE,
    PICKLE_SINGLE_FILE,
    SAFETENSORS_INDEX_FILE,
    SAFETENSORS_SINGLE_FILE,
    WEIGHT_EXTENSIONS,
)
from flq_audit.errors import CheckpointNotFoundError, IntegrityError, StepSelectionError
from flq_audit.sources._base import CheckpointRef, CheckpointSource
from flq_audit.sources.steps import parse_step


class LocalFolderSource(CheckpointSource):
    """A folder of checkpoints on local disk."""

    name: ClassVar[str] = "local"

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser().resolve()
        if not self.root.exists():
            raise CheckpointNotFoundError(
                f"source {str(root)!r} does not exist", path=root,
                hint="Pass a folder of checkpoints (or, with the Hub extra, a repo id).",
            )
        if not self.root.is_dir():
            raise CheckpointNotFoundError(
                f"source {str(root)!r} is not a folder", path=root,
                hint="Pass the folder that holds the checkpoint files, not one file.",
            )

    @classmethod
    def guess_can_open(cls, spec: str) -> bool:
        return Path(spec).expanduser().exists()

    def describe(self) -> str:
        return str(self.root)

    def list_refs(self) -> list[CheckpointRef]:
        candidates: dict[int, list[CheckpointRef]] = defaultdict(list)
        for entry in sorted(self.root.iterdir()):
            ref = self._ref_for(entry)
            if ref is not None:
                candidates[ref.step].append(ref)
        refs = []
        for step in sorted(candidates):
            refs.append(_one_per_step(step, candidates[step]))
        if not refs:
            seen = sorted(p.name for p in self.root.iterdir())[:20]
            raise CheckpointNotFoundError(
                f"no checkpoints found in {str(self.root)!r}; "
                f"looked for *{{{','.join(WEIGHT_EXTENSIONS)}}} files with a step in their name "
                f"and checkpoint-N/ folders; found: {seen or 'an empty folder'}",
                path=self.root,
            )
        return refs

    def fetch(self, ref: CheckpointRef) -> list[Path]:
        paths = [Path(f) for f in ref.files]
        for path in paths:
            if not path.is_file():
                raise CheckpointNotFoundError(
                    f"step {ref.step} ({ref.label}): file {str(path)!r} disappeared since the "
                    "folder was listed; finished steps are kept: restore it and rerun to resume",
                    path=path, step=ref.step,
                )
        return paths

    # ------------------------------------------------------------------ helpers
    def _ref_for(self, entry: Path) -> CheckpointRef | None:
        if entry.name.startswith("."):
            return None
        if entry.is_file():
            suffix = entry.suffix.lower()
            if suffix not in WEIGHT_EXTENSIONS or _is_auxiliary(entry.stem):
                return None
            step = _checked(parse_step(entry.stem), entry)
            if step is None:
                return None
            fmt = "pickle" if suffix in PICKLE_EXTENSIONS else "safetensors"
            return CheckpointRef(
                step=step, label=entry.name, location=str(self.root), files=(str(entry),),
                fmt=fmt, size_bytes=entry.stat().st_size,
            )
        if entry.is_dir():
            step = _checked(parse_step(entry.name), entry)
            if step is None:
                return None
            found = weight_files_in_folder(entry)
            if found is None:
                return None
            files, fmt = found
            return CheckpointRef(
                step=step, label=entry.name + "/", location=str(self.root),
                files=tuple(str(f) for f in files), fmt=fmt,
                size_bytes=sum(f.stat().st_size for f in files),
            )
        return None


def weight_files_in_folder(folder: Path) -> tuple[list[Path], str] | None:
    """The weight files of a one-checkpoint folder, safetensors first, or ``None``."""
    for index_name, fmt in ((SAFETENSORS_INDEX_FILE, "safetensors"), (PICKLE_INDEX_FILE, "pickle")):
        index = folder / index_name
        if index.is_file():
            return _files_from_index(index), fmt
    for single, fmt in ((SAFETENSORS_SINGLE_FILE, "safetensors"), (PICKLE_SINGLE_FILE, "pickle")):
        if (folder / single).is_file():
            return [folder / single], fmt
    weights = [p for p in sorted(folder.glob("*.safetensors")) if not _is_auxiliary(p.stem)]
    if len(weights) == 1:
        return weights, "safetensors"
    return None


def _files_from_index(index: Path) -> list[Path]:
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
    except (OSError, ValueError, KeyError) as err:
        raise IntegrityError(
            f"shard index {str(index)!r} is not a valid index: expected JSON with a "
            f"'weight_map' object ({err})", path=index,
        ) from err
    shards = sorted({index.parent / name for name in weight_map.values()})
    missing = [s.name for s in shards if not s.is_file()]
    if missing:
        raise IntegrityError(
            f"shard index {str(index)!r} names shard(s) that are missing: {missing}", path=index,
        )
    return shards


def _is_auxiliary(stem: str) -> bool:
    lowered = stem.lower()
    return any(lowered.startswith(prefix) for prefix in NON_WEIGHT_STEMS)


def _one_per_step(step: int, refs: list[CheckpointRef]) -> CheckpointRef:
    if len(refs) == 1:
        return refs[0]
    by_stem = {Path(r.label.rstrip("/")).stem for r in refs}
    safetensors = [r for r in refs if r.fmt == "safetensors"]
    if len(by_stem) == 1 and len(safetensors) == 1:
        return safetensors[0]
    labels = ", ".join(sorted(r.label for r in refs))
    raise StepSelectionError(
        f"step {step} is claimed by several checkpoints: {labels}",
        step=step, hint="Keep one checkpoint per step in the folder, or move the others away.",
    )


#: Steps are stored as 64-bit integers.
MAX_STEP = 2**63 - 1


def _checked(step: int | None, entry: Path) -> int | None:
    """``step``, refused with a clear error when a 64-bit store cannot hold it."""
    if step is not None and not 0 <= step <= MAX_STEP:
        raise StepSelectionError(
            f"checkpoint {entry.name!r}: step {step} is outside 0 ... {MAX_STEP} "
            "(steps are stored as 64-bit integers)", path=entry,
            hint="Rename the file so that its step number fits, or move it out of the folder.",
        )
    return step
