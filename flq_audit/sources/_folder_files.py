"""The weight files of a one-checkpoint folder (``checkpoint-500/``): an index's shards,
one single file, or the one safetensors file it holds; safetensors before pickles."""

from __future__ import annotations

import json
from pathlib import Path

from flq_audit.constants import (
    NON_WEIGHT_STEMS,
    PICKLE_INDEX_FILE,
    PICKLE_SINGLE_FILE,
    SAFETENSORS_INDEX_FILE,
    SAFETENSORS_SINGLE_FILE,
)
from flq_audit.errors import IntegrityError


def weight_files_in_folder(folder: Path) -> tuple[list[Path], str] | None:
    """The weight files of a one-checkpoint folder, safetensors first, or ``None``."""
    for index_name, fmt in ((SAFETENSORS_INDEX_FILE, "safetensors"), (PICKLE_INDEX_FILE, "pickle")):
        index = folder / index_name
        if index.is_file():
            return _files_from_index(index), fmt
    for single, fmt in ((SAFETENSORS_SINGLE_FILE, "safetensors"), (PICKLE_SINGLE_FILE, "pickle")):
        if (folder / single).is_file():
            return [folder / single], fmt
    weights = [p for p in sorted(folder.glob("*.safetensors")) if not is_auxiliary(p.stem)]
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


def is_auxiliary(stem: str) -> bool:
    """A file beside the weights (optimizer, scheduler, RNG state ...), not a weight file."""
    lowered = stem.lower()
    return any(lowered.startswith(prefix) for prefix in NON_WEIGHT_STEMS)


__all__ = ["is_auxiliary", "weight_files_in_folder"]
