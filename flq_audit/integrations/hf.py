"""A ``transformers.Trainer`` callback that audits each checkpoint the Trainer saves.

The Trainer writes ``OUTPUT_DIR/checkpoint-{global_step}/``; at ``on_save`` the callback
hands that step to the audit worker, which audits ``OUTPUT_DIR`` with ``--steps STEP`` into
one store. The Trainer's model, optimizer, RNG and device are never touched: the audit reads
the saved files. Needs the extra ``flq-audit[hf]`` (imported on first use of the class).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from flq_audit.integrations._lazy import lazy_class
from flq_audit.integrations._settings import AuditSettings
from flq_audit.integrations._worker import AuditWorker, OnError
from flq_audit.options import DEFAULT_CAPTURE, DEFAULT_RUN, CaptureOptions, RunOptions, SourceOptions

if TYPE_CHECKING:
    from flq_audit.audit.extensions.fl_inputs import FLOptions
    from flq_audit.options import TextProbeOptions


class TrainerAudit:
    """The callback's behaviour, free of transformers (:data:`FlqAuditCallback` adds
    ``TrainerCallback`` as a base when first used, so importing this module stays cheap).

    Audit every checkpoint a ``transformers.Trainer`` saves into ``store``.

    Parameters
    ----------
    store : path or URL
        The audit store (as ``--out``).
    model, probe : str
        As ``--model`` and ``--probe`` take them (``model="hf"`` rebuilds the architecture
        from each checkpoint's ``config.json``).
    capture, run, source, text, fl, weights_only, storage_options
        The options objects of :func:`flq_audit.api.plan_audit`.
    inline : bool
        Audit in the training process at each save (for debugging).
    on_error : "raise" or "warn"
        What the end of training does when a step's audit failed.

    With ``save_total_limit`` the Trainer may delete a checkpoint before it is audited; that
    step then fails with the folder named.
    """

    def __init__(
        self, store: str | Path, *, model: str | None = None, probe: str | None = None,
        weights_only: bool = False, capture: CaptureOptions = DEFAULT_CAPTURE,
        run: RunOptions = DEFAULT_RUN, source: SourceOptions | None = None,
        text: TextProbeOptions | None = None, fl: FLOptions | None = None,
        storage_options: dict[str, Any] | None = None, inline: bool = False,
        on_error: OnError = "raise",
    ) -> None:
        self.store = str(store)
        self._options: dict[str, Any] = dict(
            model=model, probe=probe, weights_only=weights_only, capture=capture, run=run,
            source=source, text=text, fl=fl, storage_options=storage_options)
        self.inline, self.on_error = inline, on_error
        self.worker: AuditWorker | None = None

    def _worker(self, output_dir: str) -> AuditWorker:
        if self.worker is None:
            settings = AuditSettings(folder=output_dir, store=self.store, **self._options)
            self.worker = AuditWorker(settings, inline=self.inline, on_error=self.on_error)
        return self.worker

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """The Trainer has written ``checkpoint-{global_step}``: hand it to the audit."""
        if state.is_world_process_zero:
            self._worker(args.output_dir).submit(state.global_step)

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Wait for the audit of every saved checkpoint; raise (or warn) for failed steps."""
        self.close()

    def close(self) -> None:
        """What the end of training does; call it when training stopped early."""
        if self.worker is not None:
            worker, self.worker = self.worker, None
            worker.close()


def _base() -> type:
    try:
        from transformers import TrainerCallback as Base
    except ImportError as err:  # the extra is missing
        raise ImportError("FlqAuditCallback needs transformers: pip install 'flq-audit[hf]'") from err
    return Base


#: ``FlqAuditCallback``: made on first use (importing this module imports no trainer).
__getattr__ = lazy_class(__name__, "FlqAuditCallback", TrainerAudit, _base)


__all__ = ["FlqAuditCallback", "TrainerAudit"]  # noqa: F822  # the class comes from __getattr__
