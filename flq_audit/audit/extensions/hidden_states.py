"""The residual stream of transformers models, captured as extra rows of ``activations``.

``hidden_states.0`` (the embeddings) to ``hidden_states.L`` enter the store as layers of
kind ``HiddenState``, reduced like any layer input (pooling or token selection); they have
no weight and so no Gram. The plan adds these layers; the replay collects them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from flq_audit.audit.extensions.base import Extension
from flq_audit.errors import OptionError

if TYPE_CHECKING:
    from flq_audit.audit.loaders import ModelLoader
    from flq_audit.audit.plan import AuditPlan


def require_transformers(loader: ModelLoader) -> None:
    """The residual stream exists only for models whose loader has one (transformers)."""
    if not loader.residual_stream:
        raise OptionError("--hidden-states needs a transformers model (--model hf)")


class HiddenStates(Extension):
    """Capture ``output.hidden_states`` of every replayed batch (``--hidden-states``)."""

    name: ClassVar[str] = "hidden_states"
    replay_outputs: ClassVar[frozenset[str]] = frozenset({"hidden_states"})

    def preflight(self, plan: AuditPlan) -> None:
        require_transformers(plan.loader)
