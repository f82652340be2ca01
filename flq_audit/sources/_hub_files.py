"""Which files of a Hub revision make up a checkpoint, decided from file listings alone.

Pure functions over :class:`RemoteFile` records (from the Hub tree API or from a cached
snapshot): no I/O. The choice follows :func:`flq_audit.sources._folder_files.weight_files_in_folder`:
a shard index first (safetensors before pickle), then ``model.safetensors``, then
``pytorch_model.bin``, then a lone ``*.safetensors``; a complete set of
``*-0000k-of-0000n.safetensors`` shards without an index is accepted too. Optimizer,
scheduler and other training-state files are never chosen.
"""

from __future__ import annotations

import json
import posixpath
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from flq_audit.constants import (
    NON_WEIGHT_STEMS,
    PICKLE_INDEX_FILE,
    PICKLE_SINGLE_FILE,
    SAFETENSORS_INDEX_FILE,
    SAFETENSORS_SINGLE_FILE,
)
from flq_audit.errors import IntegrityError
from flq_audit.sources._base import CheckpointRef

#: Small files a model builder may want next to the weights; fetched when present.
AUX_FILES = (
    "config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
    "special_tokens_map.json", "added_tokens.json", "vocab.json", "vocab.txt", "merges.txt",
    "tokenizer.model", "spiece.model", "sentencepiece.bpe.model",
)
_SHARD = re.compile(r"(?P<prefix>.+)-(?P<k>\d{5,6})-of-(?P<n>\d{5,6})\.safetensors")


@dataclass(frozen=True)
class RemoteFile:
    """One file of a revision: repo path, size in bytes, LFS sha256 and git blob id if known."""

    path: str
    size: int
    sha256: str | None = None
    blob_id: str | None = None


@dataclass(frozen=True)
class WeightChoice:
    """The files chosen in one folder of a revision."""

    folder: str
    fmt: str
    weights: tuple[str, ...]  # repo paths; empty until an index is resolved
    index: str | None = None
    aux: tuple[str, ...] = ()


def files_in(files: Iterable[RemoteFile], folder: str) -> dict[str, RemoteFile]:
    """``{basename: file}`` for the files directly inside ``folder`` ("" = the root)."""
    return {posixpath.basename(f.path): f for f in files if posixpath.dirname(f.path) == folder}


def choose_weights(files: Iterable[RemoteFile], folder: str = "") -> WeightChoice | None:
    """The weight files (or the index naming them) of one checkpoint folder, or ``None``."""
    here = files_in(files, folder)

    def repo_path(name: str) -> str:
        return posixpath.join(folder, name) if folder else name

    aux = tuple(repo_path(n) for n in AUX_FILES if n in here)
    for index_name, fmt in ((SAFETENSORS_INDEX_FILE, "safetensors"), (PICKLE_INDEX_FILE, "pickle")):
        if index_name in here:
            return WeightChoice(folder, fmt, (), repo_path(index_name), (*aux, repo_path(index_name)))
    for single, fmt in ((SAFETENSORS_SINGLE_FILE, "safetensors"), (PICKLE_SINGLE_FILE, "pickle")):
        if single in here:
            return WeightChoice(folder, fmt, (repo_path(single),), None, aux)
    candidates = sorted(
        n for n in here if n.endswith(".safetensors") and not n.lower().startswith(NON_WEIGHT_STEMS)
    )
    if len(candidates) == 1:
        return WeightChoice(folder, "safetensors", (repo_path(candidates[0]),), None, aux)
    shards = _complete_shard_set(candidates)
    if shards:
        return WeightChoice(folder, "safetensors", tuple(repo_path(n) for n in shards), None, aux)
    return None


def resolve_index(choice: WeightChoice, index_text: str, files: Iterable[RemoteFile]) -> WeightChoice:
    """Fill ``choice.weights`` from the shard index's ``weight_map``; every shard must exist."""
    try:
        weight_map = json.loads(index_text)["weight_map"]
        names = sorted(set(weight_map.values()))
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise IntegrityError(
            f"shard index {choice.index!r} is not a valid index: expected JSON with a "
            f"'weight_map' object ({err})", path=choice.index,
        ) from err
    here = files_in(files, choice.folder)
    missing = [n for n in names if n not in here]
    if missing or not names:
        raise IntegrityError(
            f"shard index {choice.index!r} names shard(s) missing from the revision: {missing or 'none'}",
            path=choice.index,
        )
    folder = choice.folder
    weights = tuple(posixpath.join(folder, n) if folder else n for n in names)
    return WeightChoice(folder, choice.fmt, weights, choice.index, choice.aux)


def file_hashes(weights: Sequence[str], files: Mapping[str, RemoteFile]) -> dict[str, tuple[str, ...]]:
    """``lfs_sha256`` / ``blob_ids`` (aligned with ``weights``) when all are known."""
    out: dict[str, tuple[str, ...]] = {}
    hashes = [files[w].sha256 for w in weights]
    if all(hashes):
        out["lfs_sha256"] = tuple(str(h) for h in hashes)
    blobs = [files[w].blob_id for w in weights]
    if all(blobs):
        out["blob_ids"] = tuple(str(b) for b in blobs)
    return out


def content_key(ref: CheckpointRef) -> tuple | None:
    """What identifies a ref's weight bytes: file names (within its folder) and their hashes."""
    folder = ref.subfolder
    names = tuple(posixpath.relpath(f, folder) if folder else f for f in ref.files)
    for key, hashes in (("lfs_sha256", ref.lfs_sha256), ("blob_ids", ref.blob_ids)):
        if hashes:
            return (ref.fmt, key, tuple(zip(names, hashes, strict=True)))
    return None


def find_duplicates(refs: Iterable[CheckpointRef]) -> dict[int, int]:
    """``{step: earlier step}`` for every ref whose weight files equal an earlier ref's.

    >>> a = CheckpointRef(0, "step0", "o/n", ("m.safetensors",), "safetensors", lfs_sha256=("x",))
    >>> b = CheckpointRef(5, "step5", "o/n", ("m.safetensors",), "safetensors", lfs_sha256=("x",))
    >>> find_duplicates([b, a])
    {5: 0}
    """
    first: dict[tuple, int] = {}
    dupes: dict[int, int] = {}
    for ref in sorted(refs, key=lambda r: r.step):
        key = content_key(ref)
        if key is None:
            continue
        if key in first:
            dupes[ref.step] = first[key]
        else:
            first[key] = ref.step
    return dupes


def _complete_shard_set(names: Sequence[str]) -> list[str]:
    matches = [m for m in map(_SHARD.fullmatch, names) if m is not None]
    if not matches or len({(m["prefix"], m["n"]) for m in matches}) != 1:
        return []
    total = int(matches[0]["n"])
    if sorted(int(m["k"]) for m in matches) != list(range(1, total + 1)):
        return []
    return sorted(m.string for m in matches)
