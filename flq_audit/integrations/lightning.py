"""A PyTorch Lightning callback that saves the module's weights at a cadence and audits them.

Every ``every_n_steps`` optimizer steps (or ``every_n_epochs`` epochs) the callback writes
``folder/checkpoint-{global_step}/model.safetensors`` through a
:class:`~flq_audit.integrations.Recorder`, which hands the step to the audit worker. The
module, its device, the optimizer and the RNG are never touched: the weights are copied to
the CPU. Needs the extra ``flq-audit[lightning]`` (``pytorch-lightning``, imported on first use of
the class).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from flq_audit.errors import FlqAuditWarning, OptionError
from flq_audit.integrations._lazy import lazy_class
from flq_audit.integrations.recorder import Recorder


class LightningAudit:
    """The callback's behaviour, free of Lightning (:data:`FlqAuditLightningCallback` adds
    ``pytorch_lightning.Callback`` as a base when first used: its import takes seconds).

    Save and audit the weights of a ``LightningModule`` during ``Trainer.fit``.

    Parameters
    ----------
    store : path or URL
        The audit store (as ``--out``).
    folder : path
        Where the checkpoints go (``checkpoint-{global_step}/``).
    every_n_steps, every_n_epochs : int
        The cadence (one of them): after every N-th optimizer step, or at the end of every
        N-th epoch. The store's step is the trainer's ``global_step`` either way.
    save_initial : bool
        Also save the weights before the first step (step 0).
    attribute : str, optional
        Save only this attribute of the module (``"net"``), not its whole state dict.
    **options
        The rest of :class:`~flq_audit.integrations.Recorder`'s arguments: ``model``,
        ``probe``, ``capture``, ``run``, ``inline``, ``on_error`` ...
    """

    def __init__(self, store: str | Path, folder: str | Path, *, every_n_steps: int | None = None,
                 every_n_epochs: int | None = None, save_initial: bool = False,
                 attribute: str | None = None, **options: Any) -> None:
        if (every_n_steps is None) == (every_n_epochs is None):
            raise OptionError("give one of every_n_steps and every_n_epochs")
        for name, value in (("every_n_steps", every_n_steps), ("every_n_epochs", every_n_epochs)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                      or value < 1):
                raise OptionError(f"{name} must be an integer >= 1; got {value!r}")
        self.store, self.folder, self.options = store, folder, options
        self.every_n_steps, self.every_n_epochs = every_n_steps, every_n_epochs
        self.save_initial, self.attribute = save_initial, attribute
        self.recorder: Recorder | None = None
        self.saved: list[int] = []

    def _save(self, trainer: Any, pl_module: Any) -> None:
        step = int(trainer.global_step)
        if not trainer.is_global_zero or step in self.saved:
            return
        if self.recorder is None:
            self.recorder = Recorder(self.store, self.folder, **self.options)
        if (self.recorder.folder / f"checkpoint-{step}").exists():  # a resumed fit
            warnings.warn(f"step {step}: {str(self.recorder.folder / f'checkpoint-{step}')!r} "
                          "exists already (a resumed run?); it is kept, not saved again, and "
                          "audited if it is not yet", FlqAuditWarning, stacklevel=2)
            self.recorder.worker.submit(step)  # a done step is skipped
            self.saved.append(step)
            return
        module = getattr(pl_module, self.attribute) if self.attribute else pl_module
        self.recorder.save(step, module)
        self.saved.append(step)

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        if self.save_initial:
            self._save(trainer, pl_module)

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        step = trainer.global_step
        if self.every_n_steps is not None and step > 0 and step % self.every_n_steps == 0:
            self._save(trainer, pl_module)

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        if self.every_n_epochs is not None and (trainer.current_epoch + 1) % self.every_n_epochs == 0:
            self._save(trainer, pl_module)

    def on_fit_end(self, trainer: Any, pl_module: Any) -> None:
        """Wait for the audit of every saved step; raise (or warn) for failed ones."""
        self.close()

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        """Training failed: finish the audit of the saved steps, warning about failures."""
        if self.recorder is not None:
            recorder, self.recorder = self.recorder, None
            recorder.worker.on_error = "warn"
            recorder.close()

    def close(self) -> None:
        if self.recorder is not None:
            recorder, self.recorder = self.recorder, None
            recorder.close()


def _base() -> type:
    try:
        from pytorch_lightning import Callback as Base
    except ImportError as err:  # the extra is missing
        raise ImportError("FlqAuditLightningCallback needs pytorch-lightning: "
                          "pip install 'flq-audit[lightning]'") from err
    return Base


#: ``FlqAuditLightningCallback``: made on first use (importing this module imports no trainer).
__getattr__ = lazy_class(__name__, "FlqAuditLightningCallback", LightningAudit, _base)


__all__ = ["FlqAuditLightningCallback", "LightningAudit"]  # noqa: F822  # the class comes from __getattr__
