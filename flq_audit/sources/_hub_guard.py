"""What a Hub source may touch on the user's machine, and what it says before going online.

``--cache drop`` deletes only files that this run downloaded: the repo's cache folder is
listed before and after each fetch, and only the difference is ever deleted (a revision, blob
or ref that was in the cache before the run stays byte for byte).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path


def cache_entries(repo_dir: Path) -> set[Path]:
    """Every file and link under a repo's HF cache folder (``blobs/``, ``snapshots/``, ``refs/``)."""
    if not repo_dir.is_dir():
        return set()
    found: set[Path] = set()
    for folder, _, files in os.walk(repo_dir):
        found.update(Path(folder) / name for name in files)
    return found


class DownloadLedger:
    """The cache entries each step's fetch added: the only ones ``release`` may delete."""

    def __init__(self) -> None:
        self._added: dict[int, set[Path]] = {}

    def record(self, step: int, before: set[Path], after: set[Path]) -> None:
        self._added.setdefault(step, set()).update(after - before)

    def release(self, step: int, repo_dir: Path) -> bool:
        """Delete what the step's fetches added (then any folder this left empty)."""
        added = self._added.pop(step, set())
        for path in added:
            if path.is_symlink() or path.is_file():
                path.unlink()
        for folder in sorted({p.parent for p in added}, key=lambda p: len(p.parts),
                             reverse=True):
            while folder != repo_dir and repo_dir in folder.parents:
                try:
                    folder.rmdir()
                except OSError:
                    break
                folder = folder.parent
        return bool(added)


_announced: set[str] = set()


def announce(repo: str, endpoint: str, *, offline: bool) -> None:
    """Say once, on stderr, which Hub repository is about to be looked up, and where."""
    if offline or repo in _announced:
        return
    _announced.add(repo)
    sys.stderr.write(f"looking up Hub repository {repo} on {endpoint}\n")


__all__ = ["DownloadLedger", "announce", "cache_entries"]
