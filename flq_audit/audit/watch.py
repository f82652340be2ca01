"""Follow a run in progress: audit what is there, then each new checkpoint as it appears.

Each poll re-lists the source (a local folder, or a Hub repo's branches and revisions),
keeps the checkpoints that are completely written (:mod:`flq_audit.sources.ready`), and
audits those not done yet into the same store, which grows along ``step``. A listing that
fails because an entry is being written (a half-written shard index, a folder with no
complete checkpoint yet) is waited out, not raised. Ctrl-C or SIGTERM stops between or
inside steps like any audit: finished steps are kept and the next watch goes on.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

from flq_audit._format import one_line
from flq_audit.errors import (
    CheckpointNotFoundError,
    IntegrityError,
    NetworkError,
    OptionError,
    StepSelectionError,
)
from flq_audit.options import DEFAULT_RUN, RunOptions, SourceOptions

#: Errors a checkpoint being written (or a step that vanished between two listings, or a
#: network blip) can cause; the watch waits them out and looks again at the next poll.
_TRANSIENT = (IntegrityError, StepSelectionError, NetworkError)


@dataclass(frozen=True)
class WatchOptions:
    """``--poll`` seconds between looks, ``--until`` the step that ends the watch once it
    (or a later step) is audited, ``--metrics`` the groups recomputed after each new step."""

    poll: float = 30.0
    until: int | None = None
    metrics: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.poll > 0:
            raise OptionError(f"--poll {self.poll}: expected a positive number of seconds")


@dataclass
class WatchResult:
    """What a watch did: the steps it wrote, those already done, those that failed."""

    store: str = ""
    written: list[int] = field(default_factory=list)
    skipped: list[int] = field(default_factory=list)
    failed: dict[int, str] = field(default_factory=dict)
    polls: int = 0

    def to_dict(self) -> dict[str, object]:
        return {"store": self.store, "written": self.written, "skipped": self.skipped,
                "failed": {str(k): v for k, v in self.failed.items()}, "polls": self.polls}


class WatchReporter(Protocol):
    """What a watch reports: one progress per audit round, and what it waits for."""

    def audit_round(self) -> AbstractContextManager[Any]: ...
    def waiting(self, message: str) -> None: ...
    def round_done(self, result: Any) -> None: ...


class SilentReporter:
    """A :class:`WatchReporter` that reports nothing."""

    @contextmanager
    def audit_round(self) -> Iterator[None]:
        yield None

    def waiting(self, message: str) -> None: ...
    def round_done(self, result: Any) -> None: ...


@dataclass(frozen=True)
class AuditCalls:
    """What a watch round calls: :func:`flq_audit.api.plan_audit`, ``run_audit`` and
    ``compute_metrics`` (handed in by :func:`flq_audit.api.watch`, which this module does not
    import: the API sits above the audit)."""

    plan: Callable[..., Any]
    run: Callable[..., Any]
    metrics: Callable[..., Any]


def watch(
    source: str, *, calls: AuditCalls, options: WatchOptions = WatchOptions(),
    run: RunOptions = DEFAULT_RUN, hub: SourceOptions | None = None,
    reporter: WatchReporter | None = None, sleep: Callable[[float], None] = time.sleep,
    **plan: Any,
) -> WatchResult:
    """Audit ``source`` now and at every poll until ``options.until`` is audited (or forever).

    ``plan`` holds the other keyword arguments of :func:`flq_audit.api.plan_audit` (``out``,
    ``model``, ``probe``, ``capture`` ...), the same at every poll, so every round writes
    the one store. A step that fails is recorded in the store and not retried by this watch.
    """
    from flq_audit.sources.ready import Readiness

    reporter = reporter or SilentReporter()
    state = _State(Readiness())
    while True:
        state.result.polls += 1
        ready, waiting, where = _look(source, hub, state)
        todo = [r.step for r in ready if r.step not in state.attempted]
        if todo and _audit_round(source, todo, state, calls, run=run, hub=hub,
                                 options=options, reporter=reporter, plan=plan):
            continue  # look again at once: more may have been written meanwhile
        if state.reached(options.until):
            return state.result
        reporter.waiting(_waiting_message(where, options, state, waiting))
        sleep(options.poll)
        state.readiness.next_poll()


@dataclass
class _State:
    readiness: Any
    result: WatchResult = field(default_factory=WatchResult)
    attempted: set[int] = field(default_factory=set)
    listing_error: str = ""

    def reached(self, until: int | None) -> bool:
        done = self.result.written + self.result.skipped
        return until is not None and any(step >= until for step in done)


def _look(source: str, hub: SourceOptions | None, state: _State) -> tuple[list[Any], dict[str, str], str]:
    """The source's ready checkpoints, the others with why, and the source's description."""
    from flq_audit.sources import open_source

    src = open_source(source, **(hub.source_kwargs() if hub is not None else {}))
    # a local folder with nothing complete in it yet is waited for; a Hub repo must exist
    transient = (*_TRANSIENT, CheckpointNotFoundError) if src.name == "local" else _TRANSIENT
    try:
        refs = src.list_refs()
        state.listing_error = ""
    except transient as err:  # an entry being written, or nothing written yet
        state.listing_error = one_line(getattr(err, "message", str(err)))
        return [], {}, src.describe()
    pending = [r for r in refs if r.step not in state.attempted]
    ready, waiting = state.readiness.split(pending)
    return ready, waiting, src.describe()


def _audit_round(source: str, steps: Sequence[int], state: _State, calls: AuditCalls, *,
                 run: RunOptions,
                 hub: SourceOptions | None, options: WatchOptions, reporter: WatchReporter,
                 plan: dict[str, Any]) -> bool:
    """Plan and run an audit of ``steps`` into the watch's store, recompute the metrics;
    ``False`` when it could not run this time (it is tried again at the next poll)."""
    selection = ",".join(str(step) for step in steps)
    try:
        planned = calls.plan(source, steps=selection, run=run, hub=hub, **plan)
    except _TRANSIENT as err:  # the source changed between the two listings: look again
        state.listing_error = one_line(str(err))
        return False
    if planned.store_refusal is not None:
        raise planned.store_refusal
    try:
        with reporter.audit_round() as progress:
            result = calls.run(planned, run, progress)
    except NetworkError as err:  # finished steps are kept; the others are tried again
        state.listing_error = one_line(err.message)
        return False
    state.attempted.update(steps)
    state.result.store = str(result.store)
    state.result.written += result.written
    state.result.skipped += result.skipped
    state.result.failed.update(result.failed)
    reporter.round_done(result)
    if options.metrics and result.written:
        calls.metrics(planned.store, metrics=options.metrics)
    return True


def _waiting_message(where: str, options: WatchOptions, state: _State,
                     waiting: dict[str, str]) -> str:
    """``waiting for new checkpoints in DIR (poll 5 s; 12 steps done; checkpoint-40 ...)``."""
    done = len(state.result.written) + len(state.result.skipped)
    parts = [f"poll {options.poll:g} s", f"{done} step{'s' if done != 1 else ''} done"]
    if options.until is not None:
        parts.append(f"until step {options.until}")
    parts += [f"{label.rstrip('/')} still being written ({why})"
              for label, why in sorted(waiting.items())]
    if state.listing_error:
        parts.append(f"listing: {state.listing_error}")
    return f"waiting for new checkpoints in {where} ({'; '.join(parts)})"


__all__ = ["AuditCalls", "SilentReporter", "WatchOptions", "WatchReporter", "WatchResult", "watch"]
