"""A plain training loop's checkpoints, audited as they are saved.

``Recorder(store, folder, model=..., probe=...)`` writes ``folder/checkpoint-{step}/
model.safetensors`` at each :meth:`Recorder.save` and hands the step to the audit worker
(:mod:`flq_audit.integrations._worker`). The folder is an ordinary checkpoint folder:
``flq-audit FOLDER --steps all --out OTHER`` with the same options writes the same store.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flq_audit.errors import OptionError
from flq_audit.integrations._settings import AuditSettings
from flq_audit.integrations._worker import AuditWorker, OnError
from flq_audit.options import DEFAULT_CAPTURE, DEFAULT_RUN, CaptureOptions, RunOptions, SourceOptions

if TYPE_CHECKING:
    import torch
    from torch import nn

    from flq_audit.audit.extensions.fl_inputs import FLOptions
    from flq_audit.options import TextProbeOptions

#: The file each step's folder holds (the local source reads ``checkpoint-N/model.safetensors``).
WEIGHTS_FILE = "model.safetensors"


class Recorder:
    """Save a model's weights at chosen steps and audit them into ``store``, beside training.

    Parameters
    ----------
    store : path or URL
        The audit store (as ``--out``).
    folder : path
        Where the checkpoints go, one ``checkpoint-{step}/`` folder each.
    model, probe : str
        As ``--model`` (a JSON spec or ``file.py:function``) and ``--probe`` take them.
    capture, run, source, text, fl, weights_only, storage_options
        The options objects of :func:`flq_audit.api.plan_audit`.
    inline : bool
        Audit in this process at each save (for debugging), instead of in the worker.
    on_error : "raise" or "warn"
        What :meth:`close` does when a step's audit failed.
    """

    def __init__(
        self, store: str | Path, folder: str | Path, *, model: str | None = None,
        probe: str | None = None, weights_only: bool = False,
        capture: CaptureOptions = DEFAULT_CAPTURE, run: RunOptions = DEFAULT_RUN,
        source: SourceOptions | None = None, text: TextProbeOptions | None = None,
        fl: FLOptions | None = None, storage_options: dict[str, Any] | None = None,
        inline: bool = False, on_error: OnError = "raise",
    ) -> None:
        self.folder = Path(folder).expanduser().resolve()
        self.folder.mkdir(parents=True, exist_ok=True)
        self.settings = AuditSettings(
            folder=str(self.folder), store=str(store), model=model, probe=probe,
            weights_only=weights_only, capture=capture, run=run, source=source, text=text,
            fl=fl, storage_options=storage_options)
        self.worker = AuditWorker(self.settings, inline=inline, on_error=on_error)

    def save(self, step: int, model: nn.Module | dict[str, torch.Tensor]) -> Path:
        """Write ``model``'s weights (a module or a state dict) as step ``step`` and hand the
        step to the audit. The model is left as it was: its tensors are copied to the CPU.

        Returns the checkpoint folder. A step already saved is refused (its folder is kept).
        """
        step = _step_number(step)
        target = self.folder / f"checkpoint-{step}"
        if target.exists():
            raise OptionError(f"step {step}: {str(target)!r} already exists; each step is "
                              "saved once", path=target, step=step,
                              hint="Save each step once, or give the Recorder a new folder.")
        write_weights(cpu_state(model), target)
        self.worker.submit(step)
        return target

    def wait(self) -> None:
        """Block until every saved step is audited (training may go on afterwards)."""
        self.worker.wait()

    def close(self) -> None:
        """Wait for the audit of every saved step; raise (or warn) for the failed ones."""
        self.worker.close()

    def __enter__(self) -> Recorder:
        return self

    def __exit__(self, kind: object, value: object, tb: object) -> None:
        self.worker.__exit__(kind, value, tb)


def _step_number(step: object) -> int:
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        try:
            import numpy as np

            if isinstance(step, np.integer) and step >= 0:
                return int(step)
        except ImportError:  # pragma: no cover - numpy is a dependency
            pass
        raise OptionError(f"step must be an integer >= 0; got {step!r}")
    return step


def cpu_state(model: Any) -> dict[str, torch.Tensor]:
    """A copy of the module's (or state dict's) tensors on the CPU, detached and contiguous;
    the model, its device and its grad state are untouched."""
    import torch

    state = model if isinstance(model, dict) else model.state_dict()
    with torch.no_grad():
        return {name: tensor.detach().to("cpu", copy=True).contiguous()
                for name, tensor in state.items() if isinstance(tensor, torch.Tensor)}


def write_weights(state: dict[str, torch.Tensor], target: Path) -> None:
    """``target/model.safetensors``, written beside ``target`` and renamed into place: the
    folder never shows a half-written checkpoint (entries starting with ``.`` are not listed)."""
    from safetensors.torch import save_file

    partial = target.with_name(f".{target.name}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)  # ours, left by an interrupted save
    partial.mkdir(parents=True)
    try:
        save_file(state, str(partial / WEIGHTS_FILE), metadata={"format": "pt"})
        os.replace(partial, target)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise


__all__ = ["WEIGHTS_FILE", "Recorder", "cpu_state", "write_weights"]
