"""Hash every file under a folder, to show that a refused command changed nothing."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


def tree_hashes(*roots: Path) -> dict[str, str]:
    """``{relative path: sha256}`` of every file (and ``->target`` of every link) under roots."""
    out: dict[str, str] = {}
    for root in roots:
        if root.is_file():
            out[str(root)] = hashlib.sha256(root.read_bytes()).hexdigest()
            continue
        for folder, dirs, files in os.walk(root):
            for name in dirs + files:
                path = Path(folder) / name
                key = os.fsdecode(bytes(path)) if isinstance(path, bytes) else str(path)
                if path.is_symlink():
                    out[key] = "->" + os.readlink(path)
                elif path.is_file():
                    out[key] = hashlib.sha256(path.read_bytes()).hexdigest()
                else:
                    out[key] = "dir"
    return out
