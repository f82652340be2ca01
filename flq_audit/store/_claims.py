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
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flq_audit.store._claim_objects import CLAIMS_PREFIX, ClaimObjects
from flq_audit.store._location import StoreLocation

#: Environment variable that sets the default lease (seconds).
LEASE_ENV = "FLQ_AUDIT_CLAIM_LEASE"
DEFAULT_LEASE_S = 60.0


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
            return self._taken_over(name, current)

        return self._update_and_confirm(name, take)

    def reopen(self, step: int | str) -> bool:
        """Take a *finished* claim whose step is not done in the store after all (its ``done``
        flag was cleared, or the store was replaced by a copy): counted like a takeover."""
        name = claim_name(step)

        def take(old: dict[str, Any] | None) -> dict[str, Any] | None:
            if old is None:
                return self._record(name, claims=1, takeovers=())
            current = Claim.from_dict(old)
            if not current.finished:
                return None
            return self._taken_over(name, current, reopened=True)

        return self._update_and_confirm(name, take)

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
    def _taken_over(self, name: str, current: Claim, **note: bool) -> dict[str, Any]:
        """This writer's record of claim ``name`` taken from ``current``, the takeover logged."""
        log = {"from": current.owner, "by": self.owner, "at": time.time(), **note}
        return self._record(name, claims=current.claims + 1,
                            takeovers=(*current.takeovers, log))

    def _update_and_confirm(
        self, name: str, change: Callable[[dict[str, Any] | None], dict[str, Any] | None]
    ) -> bool:
        """Apply ``change`` to the claim object; True when this writer then holds it."""
        if self.objects.update(name, change) is None:
            return False
        return self._confirm(name)

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
