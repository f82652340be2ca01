"""Claims: which writer works on which step, kept in the store itself so they work anywhere.

Before a writer writes a step it claims it with a small JSON object
``STORE/.flq/claims/step-<N>.json``::

    {"name": "step-10", "owner": "host:pid:uuid", "expires": 1733220000.0, "lease_s": 60.0,
     "state": "held", "claims": 1, "takeovers": []}

- **Create if absent.** A claim is created only when no claim object exists: on a local folder
  by a hard link (atomic), on S3 by a conditional put (``If-None-Match: *``); on other fsspec
  filesystems by a check then a write, re-read to confirm.
- **Lease.** ``expires`` is renewed every ``lease_s / 3`` seconds by a heartbeat thread while the
  step is written. A live claim of another writer makes :meth:`StepClaims.claim` return False
  (the step is someone else's). An expired claim (its writer was killed or stalled) is taken
  over: its ``claims`` counter goes up by one and the previous owner goes into ``takeovers``.
  A claim whose owner ran on this host and whose process is gone is taken over at once.
  Updates are compare-and-swap where the store allows it (a kernel lock on a local folder,
  ``If-Match`` on S3) and are always re-read to confirm.
- **Finished.** After ``done(step)`` is written the claim is kept with ``state: finished``, so
  ``claims`` shows how many times the step was taken in full: 1 unless a writer died. A step
  that failed has its claim removed, so a rerun retries it.

A double write is harmless anyway: every write of a step is idempotent and ``done(step)`` is
written last. Claims save the work, they do not guard correctness. Lease times are compared
with the local wall clock: the machines sharing a store need clocks within a fraction of the
lease.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flq_audit.store._location import StoreLocation

#: Where the claim objects live inside a store.
CLAIMS_PREFIX = ".flq/claims"
#: zarr notes the claims folder when it lists a store's members; it is not data.
warnings.filterwarnings("ignore", message=r"Object at \.flq is not recognized")
#: Environment variable that sets the default lease (seconds).
LEASE_ENV = "FLQ_AUDIT_CLAIM_LEASE"
DEFAULT_LEASE_S = 60.0

Update = Callable[[dict[str, Any] | None], dict[str, Any] | None]


def default_lease() -> float:
    """The lease in seconds: ``FLQ_AUDIT_CLAIM_LEASE`` or 60."""
    try:
        return max(0.1, float(os.environ.get(LEASE_ENV, DEFAULT_LEASE_S)))
    except ValueError:
        return DEFAULT_LEASE_S


def new_owner() -> str:
    """``host:pid:uuid``: unique per writer, readable by people."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"


def claim_name(step: int | str) -> str:
    """``step-10`` for a step; other names (``template``, ``metrics``) as they are."""
    return str(step) if isinstance(step, str) else f"step-{int(step)}"


@dataclass(frozen=True)
class Claim:
    """One claim object as read from the store."""

    name: str
    owner: str
    expires: float
    lease_s: float
    state: str = "held"
    claims: int = 1
    takeovers: tuple[dict[str, Any], ...] = field(default_factory=tuple)

    @property
    def finished(self) -> bool:
        return self.state == "finished"

    def expired(self, now: float | None = None) -> bool:
        return not self.finished and (time.time() if now is None else now) > self.expires

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Claim:
        return cls(name=str(data.get("name", "")), owner=str(data.get("owner", "")),
                   expires=float(data.get("expires", 0.0)),
                   lease_s=float(data.get("lease_s", 0.0)),
                   state=str(data.get("state", "held")), claims=int(data.get("claims", 1)),
                   takeovers=tuple(data.get("takeovers", ())))


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
        folder = f"{root.rstrip('/')}/{CLAIMS_PREFIX}"
        try:
            found = fs.ls(folder, detail=False)
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


def _dead_here(owner: str) -> bool:
    """``owner`` ran on this host and its process is gone (its claim need not wait out the
    lease)."""
    host, _, rest = owner.partition(":")
    pid_text = rest.partition(":")[0]
    if host != socket.gethostname() or not pid_text.isdigit():
        return False
    pid = int(pid_text)
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False
    return False


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


class StepClaims:
    """Per-step claims of one writer on one store, with a heartbeat that renews held leases.

    >>> claims = StepClaims(StoreLocation.parse("memory://doc/x.zarr"), lease_s=30)
    >>> claims.claim(10), claims.claim(10)
    (True, True)
    >>> StepClaims(claims.location, lease_s=30).claim(10)  # live and someone else's
    False
    >>> claims.finish(10); claims.read(10).claims
    1
    >>> claims.close()
    """

    def __init__(self, location: StoreLocation | str | Path, *, owner: str | None = None,
                 lease_s: float | None = None) -> None:
        self.location = StoreLocation.parse(location)
        self.owner = owner or new_owner()
        self.lease_s = float(lease_s) if lease_s is not None else default_lease()
        self.objects = ClaimObjects(self.location)
        self._held: set[str] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None

    # ------------------------------------------------------------------ reading
    def read(self, step: int | str) -> Claim | None:
        """The claim of ``step`` as stored now (None when there is none)."""
        data = self.objects.read(claim_name(step))
        return None if data is None else Claim.from_dict(data)

    def all(self) -> dict[str, Claim]:
        """Every claim in the store, by name."""
        out = {}
        for name in self.objects.names():
            data = self.objects.read(name)
            if data is not None:
                out[name] = Claim.from_dict(data)
        return out

    # ------------------------------------------------------------------ writing
    def claim(self, step: int | str) -> bool:
        """Take ``step``: True when this writer holds it now (new, ours, or taken over from an
        expired claim); False when another writer's claim is live or the step is finished."""
        name = claim_name(step)
        now = time.time()
        fresh = self._record(name, claims=1, takeovers=())
        if self.objects.create(name, fresh):
            return self._confirm(name)

        def take(old: dict[str, Any] | None) -> dict[str, Any] | None:
            if old is None:  # released meanwhile: take it as new
                return fresh
            current = Claim.from_dict(old)
            if current.finished:
                return None
            if current.owner == self.owner:
                return {**old, "expires": time.time() + self.lease_s}
            if current.expires >= now and not _dead_here(current.owner):
                return None
            log = {"from": current.owner, "by": self.owner, "at": time.time()}
            return self._record(name, claims=current.claims + 1,
                                takeovers=(*current.takeovers, log))

        if self.objects.update(name, take) is None:
            return False
        return self._confirm(name)

    def renew(self, step: int | str) -> bool:
        """Push the lease of a held claim forward; False when it is no longer ours."""
        name = claim_name(step)

        def extend(old: dict[str, Any] | None) -> dict[str, Any] | None:
            if old is None or old.get("owner") != self.owner or old.get("state") == "finished":
                return None
            return {**old, "expires": time.time() + self.lease_s}

        ok = self.objects.update(name, extend) is not None
        if not ok:
            with self._lock:
                self._held.discard(name)
        return ok

    def release(self, step: int | str) -> None:
        """Give ``step`` up unfinished (its claim is removed, if still ours)."""
        name = claim_name(step)
        with self._lock:
            self._held.discard(name)
        current = self.read(step)
        if current is not None and current.owner == self.owner and not current.finished:
            self.objects.delete(name)

    def finish(self, step: int | str) -> None:
        """Mark ``step`` finished (after ``done(step)``); the claim is kept as a record."""
        name = claim_name(step)
        with self._lock:
            self._held.discard(name)

        def done(old: dict[str, Any] | None) -> dict[str, Any] | None:
            if old is not None and old.get("owner") not in (None, self.owner):
                return None  # taken over meanwhile: the taker finishes it
            base = old or self._record(name, claims=1, takeovers=())
            return {**base, "state": "finished", "finished_at": time.time()}

        self.objects.update(name, done)

    @contextlib.contextmanager
    def hold(self, step: int | str, *, keep: bool = True) -> Iterator[bool]:
        """``with claims.hold(step) as mine:`` write when ``mine``. On success the claim is
        marked finished (``keep=False``: removed, for work that is done again later, such as
        a metrics run); on an exception it is removed."""
        mine = self.claim(step)
        try:
            yield mine
        except BaseException:
            if mine:
                self.release(step)
            raise
        if mine:
            if keep:
                self.finish(step)
            else:
                self.release(step)

    def close(self) -> None:
        """Stop the heartbeat (held claims then expire after their lease)."""
        self._stop.set()
        if self._beat is not None:
            self._beat.join(timeout=5)

    # ------------------------------------------------------------------ internals
    def _record(self, name: str, *, claims: int, takeovers: tuple) -> dict[str, Any]:
        return {"name": name, "owner": self.owner, "expires": time.time() + self.lease_s,
                "lease_s": self.lease_s, "state": "held", "claims": claims,
                "takeovers": list(takeovers)}

    def _confirm(self, name: str) -> bool:
        """Re-read after writing: the claim is ours only if the stored owner is us."""
        data = self.objects.read(name)
        if data is None or data.get("owner") != self.owner or data.get("state") == "finished":
            return False
        with self._lock:
            self._held.add(name)
        self._start_heartbeat()
        return True

    def _start_heartbeat(self) -> None:
        if self._beat is not None and self._beat.is_alive():
            return
        self._stop.clear()
        self._beat = threading.Thread(target=self._heartbeat, name="flq-audit-claims",
                                      daemon=True)
        self._beat.start()

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.lease_s / 3):
            with self._lock:
                held = list(self._held)
            for name in held:
                with contextlib.suppress(Exception):  # a missed beat only shortens the lease
                    self.renew(name)


__all__ = ["CLAIMS_PREFIX", "LEASE_ENV", "Claim", "StepClaims", "claim_name", "default_lease",
           "new_owner"]
