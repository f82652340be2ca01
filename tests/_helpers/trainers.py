"""Tiny real trainers for the integration tests: a transformers ``Trainer`` and a Lightning
``Trainer`` fitting the 6→8→8→3 MLP of :mod:`tests._helpers.runs` on CPU, and the RNG
states they leave behind."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from flq_audit.models import build_from_spec
from tests._helpers.runs import SMALL_SPEC, small_probe


def write_inputs(root: Path) -> tuple[Path, Path]:
    """``root/spec.json`` (the MLP) and ``root/probe.npz`` (40 rows): ``--model``, ``--probe``."""
    root.mkdir(parents=True, exist_ok=True)
    spec, probe = root / "spec.json", root / "probe.npz"
    spec.write_text(json.dumps(SMALL_SPEC))
    inputs, labels = small_probe(40, seed=1)
    np.savez(probe, inputs=inputs, targets=labels, num_classes=np.int64(3))
    return spec, probe


def rng_states() -> dict[str, Any]:
    """Python, NumPy and torch CPU RNG states, comparable with ``==``."""
    return {"python": random.getstate(), "numpy": np.random.get_state()[1].tolist(),
            "torch": torch.get_rng_state().tolist()}


def training_rows(n: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    inputs, labels = small_probe(n, seed=2)
    return torch.from_numpy(inputs), torch.from_numpy(labels).long()


# ---------------------------------------------------------------- transformers
def hf_model() -> Any:
    """A ``PreTrainedModel`` holding the MLP as ``net`` (its checkpoints load into the spec)."""
    import transformers

    class TinyConfig(transformers.PretrainedConfig):
        model_type = "flq-tiny-mlp"

    class TinyMLP(transformers.PreTrainedModel):
        config_class = TinyConfig

        def __init__(self, config: Any) -> None:
            super().__init__(config)
            self.net = build_from_spec(SMALL_SPEC)
            self.post_init()

        def _init_weights(self, module: Any) -> None:  # the MLP's own init is kept
            pass

        def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> dict:
            logits = self.net(x)
            loss = None if labels is None else torch.nn.functional.cross_entropy(logits, labels)
            return {"loss": loss, "logits": logits}

    torch.manual_seed(0)
    return TinyMLP(TinyConfig())


def train_hf(output_dir: Path, callbacks: list, *, max_steps: int = 6, save_steps: int = 2
             ) -> Any:
    """A real ``transformers.Trainer`` run on CPU; returns the trained model."""
    import transformers

    inputs, labels = training_rows()
    rows = [{"x": x, "labels": y} for x, y in zip(inputs, labels, strict=True)]
    args = transformers.TrainingArguments(
        output_dir=str(output_dir), max_steps=max_steps, save_steps=save_steps,
        per_device_train_batch_size=8, learning_rate=0.05, report_to=[], use_cpu=True,
        disable_tqdm=True, logging_strategy="no", seed=0, dataloader_num_workers=0)
    model = hf_model()
    transformers.Trainer(model=model, args=args, train_dataset=rows, callbacks=callbacks).train()
    return model


# ---------------------------------------------------------------- Lightning
def lightning_module() -> Any:
    import pytorch_lightning as pl

    class TinyModule(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = build_from_spec(SMALL_SPEC)

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            x, y = batch
            return torch.nn.functional.cross_entropy(self.net(x), y)

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(self.parameters(), lr=0.05)

    return TinyModule()


def train_lightning(callbacks: list, *, max_steps: int = 6) -> Any:
    """A real Lightning ``Trainer.fit`` on CPU (shuffled batches of 8); returns the module."""
    import pytorch_lightning as pl
    from torch.utils.data import DataLoader, TensorDataset

    pl.seed_everything(0, verbose=False)
    module = lightning_module()
    loader = DataLoader(TensorDataset(*training_rows()), batch_size=8, shuffle=True)
    trainer = pl.Trainer(max_steps=max_steps, accelerator="cpu", devices=1, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, callbacks=callbacks)
    trainer.fit(module, loader)
    return module
