"""A local-folder source that knows its identical checkpoint files before any is loaded."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, ClassVar

from flq_audit import sources
from flq_audit.sources.local import LocalFolderSource


def hashed_folder_source(monkeypatch: Any) -> type[LocalFolderSource]:
    """Register, for one test, a ``hashed:FOLDER`` source that reports duplicate steps by
    file hash and records which steps it fetched and released."""

    class HashedFolder(LocalFolderSource):
        name = "hashed"
        supports_release = supports_duplicates = True
        released: ClassVar[list[int]] = []
        fetched: ClassVar[list[int]] = []

        @classmethod
        def guess_can_open(cls, spec: str) -> bool:
            return spec.startswith("hashed:")

        def __init__(self, spec: str) -> None:
            super().__init__(spec.removeprefix("hashed:"))

        def duplicates(self, refs):
            first: dict[str, int] = {}
            out = {}
            for ref in refs:
                digest = hashlib.sha256(Path(ref.files[0]).read_bytes()).hexdigest()
                if digest in first:
                    out[ref.step] = first[digest]
                first.setdefault(digest, ref.step)
            return out

        def release(self, ref) -> bool:
            self.released.append(ref.step)
            return True

        def fetch(self, ref):
            self.fetched.append(ref.step)
            return super().fetch(ref)

    monkeypatch.setattr(sources, "SOURCE_FAMILIES",
                        {"hashed": HashedFolder, **sources.SOURCE_FAMILIES})
    return HashedFolder
