"""Finish a store whose last writer died before finishing it (``flq-audit show --repair``).

Each writer, as it finishes, writes the ``checkpoints`` provenance of every done step and
consolidates the metadata; the last one to finish leaves them complete. A writer killed
between its last ``done`` and that point leaves them stale. Repairing does that last part
again, once no writer holds a live claim on the store.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from flq_audit.errors import StoreLockedError
from flq_audit.store._claims import StepClaims, _dead_here
from flq_audit.store._location import StoreLocation


@dataclass(frozen=True)
class RepairResult:
    """What a repair found: done steps, steps not done, claims left by dead writers."""

    done: list[int]
    not_done: list[int]
    abandoned_claims: list[str] = field(default_factory=list)


def repair_store(location: StoreLocation) -> RepairResult:
    """Write the provenance of the done steps and consolidate; refused while a writer (an
    audit or ``metrics``) holds a live claim."""
    import zarr

    from flq_audit.store._writer import finish_store, zarr_array

    claims = StepClaims(location)
    try:
        held = {name: c for name, c in claims.all().items() if not c.finished}
        live = sorted(name for name, c in held.items()
                      if not c.expired() and not _dead_here(c.owner))
        if live:
            owners = sorted({held[name].owner for name in live})
            raise StoreLockedError(
                f"writers are still working on this store ({', '.join(live)}; owner(s) "
                f"{', '.join(owners)})", path=location.display,
                hint="Wait for them to finish: the last one leaves the store complete. A "
                "writer that was killed stops holding its claims when its lease runs out.")
        group = zarr.open_group(location.zarr_store(), mode="r+")
        done = {int(step) for step in finish_store(group, location)}
        steps = [int(s) for s in np.asarray(zarr_array(group, "step")[:])]
        return RepairResult(done=[s for s in steps if s in done],
                            not_done=[s for s in steps if s not in done],
                            abandoned_claims=sorted(held))
    finally:
        claims.close()


__all__ = ["RepairResult", "repair_store"]
