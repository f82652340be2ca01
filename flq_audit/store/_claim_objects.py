"""Small JSON objects in a store with create-if-absent and compare-and-swap updates: the
storage under :mod:`flq_audit.store._claims`.

On a local folder: creation by a hard link (atomic), updates under a kernel lock on
``.flq/claims/.lock`` and by rename. On S3: a conditional put (``If-None-Match: *``) and
``If-Match`` on the ETag. On other fsspec filesystems: a check, a write and a re-read.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from flq_audit.store._location import StoreLocation

#: Where the claim objects live inside a store.
CLAIMS_PREFIX = ".flq/claims"
#: zarr notes the claims folder when it lists a store's members; it is not data.
warnings.filterwarnings("ignore", message=r"Object at \.flq is not recognized")

Update = Callable[[dict[str, Any] | None], dict[str, Any] | None]


class ClaimObjects:
    """Create-if-absent, compare-and-swap update and delete of small JSON objects in a store."""

    def __init__(self, location: StoreLocation) -> None:
        self.location = location

    def _key(self, name: str) -> str:
        return f"{CLAIMS_PREFIX}/{name}.json"

    def read(self, name: str) -> dict[str, Any] | None:
        for _ in range(20):  # a local update is a rename: a torn read is not expected, but cheap
            if not self.location.is_local:
                fs, _root = self.location.filesystem()
                fs.invalidate_cache()
            data = self.location.read_bytes(self._key(name))
            if data is None:
                return None
            try:
                value = json.loads(data)
            except ValueError:
                time.sleep(0.01)
                continue
            return value if isinstance(value, dict) else None
        return None

    def names(self) -> list[str]:
        """Every claim object's name."""
        if self.location.is_local:
            folder = self.location.path / CLAIMS_PREFIX
            return sorted(p.stem for p in folder.glob("*.json")) if folder.is_dir() else []
        fs, root = self.location.filesystem()
        fs.invalidate_cache()
        prefix = f"{root.rstrip('/')}/{CLAIMS_PREFIX}"
        try:
            found = fs.ls(prefix, detail=False)
        except FileNotFoundError:
            return []
        return sorted(Path(p).stem for p in found if str(p).endswith(".json"))

    def create(self, name: str, value: dict[str, Any]) -> bool:
        """Write ``value`` only if no object ``name`` exists; True when this call created it."""
        data = json.dumps(value).encode()
        if self.location.is_local:
            return _local_create(self.location.path / self._key(name), data)
        fs, root = self.location.filesystem()
        path = f"{root.rstrip('/')}/{self._key(name)}"
        if self.location.protocol in ("s3", "s3a"):
            try:
                fs.pipe_file(path, data, mode="create")
            except OSError as err:
                if _precondition_failed(err):
                    return False
                raise
            return True
        if self.read(name) is not None:
            return False
        fs.pipe_file(path, data)
        return (self.read(name) or {}).get("owner") == value.get("owner")

    def update(self, name: str, change: Update) -> dict[str, Any] | None:
        """Apply ``change(old) -> new`` atomically where the store allows; None: nothing written."""
        if self.location.is_local:
            return self._local_update(name, change)
        fs, root = self.location.filesystem()
        path = f"{root.rstrip('/')}/{self._key(name)}"
        for _ in range(50):
            old = self.read(name)
            new = change(old)
            if new is None:
                return None
            if old is None:
                if self.create(name, new):
                    return new
                continue
            match: dict[str, Any] = {}
            if self.location.protocol in ("s3", "s3a"):
                with contextlib.suppress(Exception):
                    match = {"IfMatch": fs.info(path)["ETag"]}
                    if json.loads(fs.cat_file(path)) != old:
                        continue  # changed between our read and the ETag: read again
            try:
                fs.pipe_file(path, json.dumps(new).encode(), **match)
            except OSError as err:
                if _precondition_failed(err):
                    continue
                raise
            return new
        return None

    def delete(self, name: str) -> None:
        if self.location.is_local:
            with _folder_lock(self.location.path / CLAIMS_PREFIX):
                (self.location.path / self._key(name)).unlink(missing_ok=True)
            return
        fs, root = self.location.filesystem()
        with contextlib.suppress(FileNotFoundError):
            fs.rm_file(f"{root.rstrip('/')}/{self._key(name)}")

    def _local_update(self, name: str, change: Update) -> dict[str, Any] | None:
        path = self.location.path / self._key(name)
        with _folder_lock(path.parent):
            new = change(self.read(name))
            if new is None:
                return None
            temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}")
            temporary.write_bytes(json.dumps(new).encode())
            os.replace(temporary, path)
            return new


def _precondition_failed(err: OSError) -> bool:
    text = str(err)
    return (err.errno == errno.EINVAL or "PreconditionFailed" in text or "412" in text
            or "At least one of the pre-conditions" in text)


def _local_create(path: Path, data: bytes) -> bool:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}")
    temporary.write_bytes(data)
    try:
        with _folder_lock(path.parent):
            os.link(temporary, path)
    except FileExistsError:
        return False
    finally:
        temporary.unlink(missing_ok=True)
    return True


@contextlib.contextmanager
def _folder_lock(folder: Path) -> Iterator[None]:
    """A short kernel lock on ``folder/.lock``, serialising local claim updates."""
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


__all__ = ["CLAIMS_PREFIX", "ClaimObjects"]
