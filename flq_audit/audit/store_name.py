"""The default store of an audit: named after enough of its source to tell runs apart."""

from __future__ import annotations

import re
from pathlib import Path

#: Folder names that say nothing about the run: the default store name adds their parents.
GENERIC_NAMES = frozenset({
    "checkpoints", "checkpoint", "ckpts", "ckpt", "runs", "run", "outputs", "output", "out",
    "weights", "models", "model", "saved_models", "results", "logs", "lightning_logs",
    "snapshots", "save", "saves", "artifacts",
})
_GENERIC = re.compile(r"(version|seed|run|trial)[-_]?\d*", re.IGNORECASE)


def default_store(root: Path) -> Path:
    """``./<source name>.zarr``, named after enough of the source to tell runs apart.

    A generic folder name (``checkpoints``, ``runs``, ``version_0`` ...) is prefixed with its
    parents up to the first telling one: ``.../DL_PA1_P2A/checkpoints`` gives
    ``DL_PA1_P2A-checkpoints.zarr``. A Hub repo ``ORG/NAME`` gives ``NAME.zarr``
    (``ORG-NAME.zarr`` when NAME is generic); a repo template's ``{step}`` is dropped.
    """
    text = str(root).removeprefix("hf://").removeprefix("hf:/")
    path = Path(text).expanduser()
    parts = path.resolve().parts if path.exists() else path.parts
    names = [p.replace("{step}", "").strip("-_") for p in parts if p not in ("/", "")]
    chosen: list[str] = []
    for name in reversed(names):
        if name:
            chosen.insert(0, name)
        if (name and not _is_generic(name)) or len(chosen) == 4:
            break
    return Path.cwd() / f"{'-'.join(chosen) or 'flq-audit'}.zarr"


def _is_generic(name: str) -> bool:
    return name.lower() in GENERIC_NAMES or _GENERIC.fullmatch(name) is not None
