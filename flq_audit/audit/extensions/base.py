"""Per-step extensions: extra values an audit computes and stores for every checkpoint.

An extension declares its store variables, checks its inputs before any checkpoint is read,
may look at each replayed batch, and returns its values for a step. Adding one is a
one-file change: write a class, pass it in ``plan_audit(..., extensions=[...])``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

import numpy as np

if TYPE_CHECKING:
    from flq_audit.audit.plan import AuditPlan
    from flq_audit.models import BuiltModel
    from flq_audit.options import RunOptions
    from flq_audit.sources import CheckpointRef
    from flq_audit.store import StoreLayout
    from flq_audit.store._records import VariableSpec


@dataclass(frozen=True)
class StepContext:
    """What an extension sees of one step.

    ``layers`` maps captured layer names to their modules (empty in weights-only audits);
    ``weights`` maps every captured layer with a weight to its ``d_out × d_in`` matrix (a
    torch tensor, the checkpoint's own); ``state`` is the checkpoint's state dict in the
    model's key names (for transformers models empty, or the files' tensors read on access
    when the replay dtype rounds them). ``scratch`` is
    a per-step dict where an extension keeps what it gathers batch by batch.
    ``next_state()`` is the next step's state dict when it is already loaded (by the
    prefetcher), else ``None``: an extension comparing with the next step loads it then.
    """

    plan: AuditPlan
    ref: CheckpointRef
    index: int
    next_ref: CheckpointRef | None
    run: RunOptions
    built: BuiltModel | None = None
    layers: Mapping[str, Any] = field(default_factory=dict)
    weights: Mapping[str, Any] = field(default_factory=dict)
    state: Mapping[str, Any] = field(default_factory=dict)
    scratch: dict[str, Any] = field(default_factory=dict)
    next_state: Callable[[], Mapping[str, Any] | None] = lambda: None


@runtime_checkable
class StepExtension(Protocol):
    """The protocol of a per-step extension (see :class:`Extension` for the defaults)."""

    #: Short name, used in messages.
    name: ClassVar[str]
    #: Whether a step with byte-identical files may copy an earlier step's values.
    copy_duplicates: ClassVar[bool]
    #: Extra model outputs the replay must collect: ``"predictions"``, ``"hidden_states"``.
    replay_outputs: ClassVar[frozenset[str]]

    def variables(self, layout: StoreLayout) -> Sequence[VariableSpec]:
        """The store variables this extension writes (declared in the template)."""
        ...

    def store_attrs(self) -> Mapping[str, str]:
        """Store attributes this extension sets."""
        ...

    def preflight(self, plan: AuditPlan) -> None:
        """Raise before any checkpoint is read when the plan cannot serve this extension."""
        ...

    def on_batch(self, ctx: StepContext, start: int, stop: int,
                 captured: Mapping[str, np.ndarray]) -> None:
        """Look at rows ``start:stop`` of one replayed batch (``{layer: rows}``)."""
        ...

    def on_step(self, ctx: StepContext) -> Mapping[str, np.ndarray]:
        """This step's values: ``{variable: array}`` without the step axis."""
        ...


class Extension:
    """Base class with the protocol's defaults: nothing declared, nothing checked."""

    name: ClassVar[str] = "extension"
    copy_duplicates: ClassVar[bool] = True
    replay_outputs: ClassVar[frozenset[str]] = frozenset()

    def variables(self, layout: StoreLayout) -> Sequence[VariableSpec]:
        return ()

    def store_attrs(self) -> Mapping[str, str]:
        return {}

    def preflight(self, plan: AuditPlan) -> None:
        return None

    def on_batch(self, ctx: StepContext, start: int, stop: int,
                 captured: Mapping[str, np.ndarray]) -> None:
        return None

    def on_step(self, ctx: StepContext) -> Mapping[str, np.ndarray]:
        return {}

    def after_audit(self, plan: AuditPlan) -> None:
        """Once the audit has written its steps: warn about what the stored values say
        (every step the store holds, this run's and earlier ones'). Optional: the runner
        calls it on extensions that have it."""
        return None


def stack_padded(blocks: Sequence[np.ndarray | None], shape: tuple[int, ...]) -> np.ndarray:
    """Stack per-layer blocks into one NaN-padded float64 array of ``(len(blocks), *shape)``."""
    out = np.full((len(blocks), *shape), np.nan)
    for i, block in enumerate(blocks):
        if block is not None:
            block = np.asarray(block)
            region: tuple[int | slice, ...] = (i, *(slice(0, n) for n in block.shape))
            out[region] = block
    return out


__all__ = ["Extension", "StepContext", "StepExtension", "stack_padded"]
