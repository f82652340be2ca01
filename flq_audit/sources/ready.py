"""Whether a local checkpoint is completely written, so that a watch never reads one half-written.

A single file is ready when it loads: a safetensors file whose header parses and that is as
long as its header says, a torch zip archive whose central directory is complete, a legacy
pickle that ``torch.load(weights_only=True)`` reads. A checkpoint folder (``checkpoint-N/``)
is ready when every weight file is, its shards come with their index, and the sizes of
everything in it stopped changing between two looks (:class:`Readiness`).
"""

from __future__ import annotations

import json
import re
import struct
import zipfile
from collections.abc import Sequence
from pathlib import Path

from flq_audit.constants import PICKLE_EXTENSIONS
from flq_audit.sources._base import CheckpointRef

_SHARD_NAME = re.compile(r"-\d{5}-of-\d{5}\.", re.IGNORECASE)
_INDEX_SUFFIX = ".index.json"


def safetensors_unready(path: Path) -> str | None:
    """Why a safetensors file is not complete yet, or ``None`` when it is."""
    try:
        with path.open("rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                return "header not written yet"
            (length,) = struct.unpack("<Q", head)
            header = fh.read(length)
        size = path.stat().st_size
    except OSError as err:
        return f"unreadable ({err.strerror or err})"
    if len(header) < length:
        return "header not written yet"
    try:
        entries = json.loads(header)
        ends = [int(v["data_offsets"][1]) for k, v in entries.items() if k != "__metadata__"]
    except (ValueError, TypeError, KeyError, IndexError):
        return "header does not parse yet"
    expected = 8 + length + max(ends, default=0)
    return None if size == expected else f"{size} of {expected} bytes written"


def pickle_unready(path: Path) -> str | None:
    """Why a torch pickle is not complete yet, or ``None`` when it reads."""
    if zipfile.is_zipfile(path):  # torch's format since 1.6: complete once its directory is
        try:
            with zipfile.ZipFile(path) as archive:
                archive.infolist()
        except (OSError, zipfile.BadZipFile) as err:
            return f"archive incomplete ({err})"
        return None
    import torch

    try:
        torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # any failure of a file being written: not ready yet
        return f"does not load yet ({type(err).__name__})"
    return None


def file_unready(path: Path) -> str | None:
    """Why one weight file is not complete yet, or ``None`` when it is."""
    if not path.is_file():
        return "missing"
    if path.suffix.lower() in PICKLE_EXTENSIONS:
        return pickle_unready(path)
    return safetensors_unready(path)


def folder_unready(files: Sequence[Path]) -> str | None:
    """Why a checkpoint folder's weight files are not complete yet, or ``None``.

    Shards (``model-00001-of-00002.safetensors``) count only with their index beside them.
    """
    for path in files:
        if _SHARD_NAME.search(path.name) and not any(
                p.name.endswith(_INDEX_SUFFIX) for p in path.parent.iterdir()):
            return "shard index not written yet"
        reason = file_unready(path)
        if reason is not None:
            return f"{path.name}: {reason}"
    return None


def _signature(folder: Path) -> tuple[tuple[str, int], ...]:
    """Names and sizes of everything in a folder (its sub-folders included)."""
    try:
        return tuple(sorted((str(p.relative_to(folder)), p.stat().st_size)
                            for p in folder.rglob("*") if p.is_file()))
    except OSError:  # a file vanished while listed: being rewritten
        return (("", -1),)


class Readiness:
    """Decides which listed checkpoints are completely written, poll after poll.

    A file is judged on its own; a folder must also look the same (names and sizes) as at
    an earlier poll, so a folder is ready at the earliest at the poll after the one that
    first saw it complete. :meth:`next_poll` marks the time between two polls.
    """

    def __init__(self) -> None:
        self._poll = 0
        self._seen: dict[str, tuple[int, tuple[tuple[str, int], ...]]] = {}

    def next_poll(self) -> None:
        """The watch waited: the next looks belong to a new poll."""
        self._poll += 1

    def unready(self, ref: CheckpointRef) -> str | None:
        """Why ``ref`` is not ready yet (``None``: it is). Hub checkpoints are always ready."""
        if ref.revision is not None or ref.commit is not None:
            return None
        files = [Path(f) for f in ref.files]
        if not ref.label.endswith("/"):
            return file_unready(files[0]) if len(files) == 1 else folder_unready(files)
        folder = files[0].parent
        reason = folder_unready(files)
        signature = _signature(folder)
        previous = self._seen.get(str(folder))
        if previous is None or previous[1] != signature:
            self._seen[str(folder)] = (self._poll, signature)
            return reason or ("seen once: its sizes are checked again at the next poll"
                              if previous is None else "sizes still changing")
        if reason is not None:
            return reason
        if previous[0] == self._poll:
            return "seen once: its sizes are checked again at the next poll"
        return None

    def split(self, refs: Sequence[CheckpointRef]) -> tuple[list[CheckpointRef], dict[str, str]]:
        """The ready refs, and each other ref's label with why it is not ready."""
        ready: list[CheckpointRef] = []
        waiting: dict[str, str] = {}
        for ref in refs:
            reason = self.unready(ref)
            if reason is None:
                ready.append(ref)
            else:
                waiting[ref.label] = reason
        return ready, waiting


__all__ = ["Readiness", "file_unready", "folder_unready", "pickle_unready", "safetensors_unready"]
