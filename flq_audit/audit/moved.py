"""Hub branches that moved: done steps whose branch now points at another commit than the
one the store pinned when they were written (a force-push, a re-upload)."""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from flq_audit.errors import MovedRevisionWarning

if TYPE_CHECKING:
    from flq_audit.audit.plan import AuditPlan
    from flq_audit.sources import CheckpointRef


@dataclass(frozen=True)
class MovedStep:
    """A done step whose Hub branch now points at another commit than the store pinned."""

    step: int
    label: str
    stored: str  # the commit the store's values come from
    current: str  # the commit the branch points at now


def moved_steps(done: Sequence[CheckpointRef], stored: Mapping[int, str]) -> tuple[MovedStep, ...]:
    """The done refs whose current commit differs from the one ``stored`` by step (refs
    without a commit, local files, never move)."""
    return tuple(MovedStep(r.step, r.label, str(stored[r.step]), str(r.commit)) for r in done
                 if r.commit and stored.get(r.step) and str(stored[r.step]) != r.commit)


def moved_message(plan: AuditPlan) -> str | None:
    """One sentence naming every done step whose branch moved, and how to re-audit them."""
    if not plan.moved:
        return None
    steps = "; ".join(f"step {m.step} ({m.label}): stored {m.stored}, now {m.current}"
                      for m in plan.moved)
    return (f"{len(plan.moved)} done step(s) of {plan.store} come from a commit their branch no "
            f"longer points at: {steps}. The stored values are kept; rerun with "
            "--reaudit-moved (RunOptions(reaudit_moved=True)) to re-audit those steps into "
            "the same store (every other step is kept)")


def warn_moved(plan: AuditPlan) -> None:
    """One :class:`MovedRevisionWarning` naming the moved steps (if any)."""
    message = moved_message(plan)
    if message is not None:
        warnings.warn(message, MovedRevisionWarning, stacklevel=3)


def already_done(plan: AuditPlan) -> tuple[tuple[int, ...], tuple[MovedStep, ...]]:
    """Selected steps an existing store holds already (a dry run reports them), and those of
    them whose Hub branch now points at another commit than the one the store pinned."""
    if not plan.store.exists():
        return (), ()
    try:
        from flq_audit.store import open_dataset

        ds = open_dataset(plan.store, dask=False)
        flags = ds["done"].values.astype(bool)
        stored = dict(zip(ds["step"].values.tolist(), ds["commit"].values.tolist(), strict=True))
    except Exception:  # an unreadable store is reported by the real run
        return (), ()
    selected = {r.step: r for r in plan.refs}
    done = tuple(int(s) for s in ds["step"].values[flags] if int(s) in selected)
    return done, moved_steps([selected[s] for s in done], stored)
