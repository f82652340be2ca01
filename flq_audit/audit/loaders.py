"""Who builds the per-step model: one :class:`ModelLoader`, chosen once by the plan.

A loader owns everything an audit does to a model: it builds the plan-time model (the
*template*, used to select layers and check the probe), decides the dtype the probe replays
in (:func:`compute_dtype`, the one place ``--activation-dtype`` takes effect), reads a
step's checkpoint files, gives each step a model of its own holding that step's weights
(:meth:`ModelLoader.load`), says what a dask worker needs to rebuild it
(:meth:`ModelLoader.for_worker`), and makes the float64 train-mode copy the FL residual
differentiates (:meth:`ModelLoader.training_copy`). The template is never changed after it
is built: steps load into copies, so an :class:`~flq_audit.audit.plan.AuditPlan` stays the
same object, weights and flags included, across a whole audit.

Three loaders:

- :class:`ModuleLoader`: a JSON spec or a factory (``--model``); the template is converted
  to the compute dtype once, and each step loads into a copy of it (a float64 checkpoint
  loads unrounded into a float64 replay).
- :class:`TransformersLoader`: ``--model hf``; transformers loads the template (the first
  checkpoint's folder) and reads each checkpoint in the compute dtype itself (``dtype=`` of
  ``from_config`` and ``from_pretrained``), so float64 means unrounded float64 weights here too.
- :class:`WeightsLoader`: ``--weights-only``; state dicts only, no module.

The replay dtype (:func:`resolve_replay_dtype`) is ``--dtype`` when given, else the legacy
compute dtype (:func:`compute_dtype`), except that a transformers model replays in its
checkpoint's own dtype (``config.json``). Grams never come from a rounded model: a module
model's step state holds the checkpoint's tensors, and a transformers model replaying in a
narrower dtype than its files gets them as :class:`~flq_audit.audit.file_tensors.FileTensors`.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol, runtime_checkable

import torch
from torch import nn

from flq_audit.audit.file_tensors import FileTensors, config_dtype
from flq_audit.errors import ModelBuildError, OptionError
from flq_audit.models import BuiltModel, build_model, load_weights

if TYPE_CHECKING:
    from flq_audit.audit.prefetch import Fetched
    from flq_audit.options import RunOptions
    from flq_audit.sources import CheckpointSource

LoaderKind = Literal["module", "transformers", "weights"]


def compute_dtype(activation_dtype: str) -> torch.dtype:
    """The dtype a probe replays in for ``--activation-dtype``: float64 replays in float64,
    float32 and float16 in float32 (float16 rows are rounded from a float32 forward)."""
    return torch.float64 if activation_dtype == "float64" else torch.float32


def resolve_replay_dtype(activation_dtype: str, requested: str | None = None,
                         checkpoint_dtype: torch.dtype | None = None) -> torch.dtype:
    """The one decision of the replay dtype: an explicit ``--dtype`` wins; else float64 for
    ``--activation-dtype float64``; else the checkpoint's own floating dtype when known
    (transformers models), float32 otherwise. ``--dtype`` below float64 with
    ``--activation-dtype float64`` is refused (the float64 rows would be rounded)."""
    if requested is not None:
        dtype = getattr(torch, requested)
        if activation_dtype == "float64" and dtype != torch.float64:
            raise OptionError(f"--dtype {requested} contradicts --activation-dtype float64 "
                              "(float64 activations need a float64 replay)",
                              hint="Leave --dtype out or pass --dtype float64.")
        return dtype
    if activation_dtype == "float64":
        return torch.float64
    if checkpoint_dtype is not None and checkpoint_dtype.is_floating_point:
        return checkpoint_dtype
    return torch.float32


@dataclass(frozen=True)
class StepModel:
    """One step's model: ``built`` holds the step's weights in the compute dtype, ready for
    replay (``None`` in weights-only audits); ``state`` is the checkpoint's state dict under
    the model's key names (empty for transformers models, whose weights live in ``built``)."""

    built: BuiltModel | None
    state: Mapping[str, Any] = field(default_factory=dict)


@runtime_checkable
class ModelLoader(Protocol):
    """What an audit asks of the model: chosen once by the plan, never changed after."""

    #: ``module`` (spec or factory), ``transformers`` or ``weights`` (no model).
    kind: ClassVar[LoaderKind]
    #: Whether the model's forward returns ``output.hidden_states`` (``--hidden-states``).
    residual_stream: ClassVar[bool]
    #: Whether the model's forward returns class scores a class probe can be compared with.
    class_scores: ClassVar[bool]
    @property
    def activation_dtype(self) -> str:
        """The ``--activation-dtype`` this loader replays for."""
        ...

    @property
    def template(self) -> BuiltModel | None:
        """The model built at plan time; ``None`` without a model or once shipped."""
        ...

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of every module this loader hands out."""
        ...

    def model(self) -> BuiltModel:
        """The plan-time model, or a :class:`ModelBuildError` saying why there is none."""
        ...

    def read(self, source: CheckpointSource, fetched: Fetched, run: RunOptions) -> None:
        """Read the fetched files into ``fetched`` (``state`` or ``built``); may run on the
        prefetch thread."""
        ...

    def load(self, fetched: Fetched) -> StepModel:
        """The step's own model, holding the weights :meth:`read` loaded."""
        ...

    def training_copy(self, built: BuiltModel, state: Mapping[str, Any]) -> nn.Module:
        """A float64, train-mode copy of a step's model with ``state`` loaded unrounded."""
        ...

    def for_worker(self) -> ModelLoader:
        """This loader as it travels to a dask worker: picklable, without module weights."""
        ...

    def rebuilt(self) -> ModelLoader:
        """The loader with what :meth:`for_worker` left out built again (once per worker)."""
        ...


def training_module(module: nn.Module, state: Mapping[str, Any]) -> nn.Module:
    """A float64 train-mode copy of ``module`` on the CPU with ``state`` loaded (float64
    copies of the checkpoint's tensors: no float32 rounding); ``module`` is not touched."""
    work = copy.deepcopy(module).to(device="cpu", dtype=torch.float64).train()
    if state:
        work.load_state_dict(dict(state), strict=False)
    return work


@dataclass(frozen=True)
class _Loader:
    """Defaults shared by the loaders."""

    kind: ClassVar[LoaderKind]
    residual_stream: ClassVar[bool] = False
    class_scores: ClassVar[bool] = False
    activation_dtype: str = "float32"
    template: BuiltModel | None = None
    #: The replay dtype's name (``None``: the legacy :func:`compute_dtype`).
    replay: str | None = None

    @property
    def dtype(self) -> torch.dtype:
        return getattr(torch, self.replay) if self.replay else compute_dtype(self.activation_dtype)

    def model(self) -> BuiltModel:
        if self.template is None:
            raise ModelBuildError(f"the {self.kind} loader holds no model here "
                                  "(weights only, or shipped without it: use rebuilt())")
        return self.template

    def read(self, source: CheckpointSource, fetched: Fetched, run: RunOptions) -> None:
        raise NotImplementedError

    def load(self, fetched: Fetched) -> StepModel:
        raise NotImplementedError

    def training_copy(self, built: BuiltModel, state: Mapping[str, Any]) -> nn.Module:
        return training_module(built.module, state)

    def for_worker(self) -> ModelLoader:
        return replace(self, template=None)

    def rebuilt(self) -> ModelLoader:
        return self


def _read_state(fetched: Fetched, run: RunOptions) -> None:
    from flq_audit.weights import load_state_dict

    fetched.state = load_state_dict(fetched.paths, trust_pickle=run.trust_pickle,
                                    step=fetched.ref.step)


@dataclass(frozen=True)
class ModuleLoader(_Loader):
    """A JSON spec or factory model: built once, converted to the compute dtype once; each
    step loads into a copy of it."""

    kind: ClassVar[LoaderKind] = "module"
    class_scores: ClassVar[bool] = True
    spec: str = ""

    @classmethod
    def create(cls, spec: str, activation_dtype: str, replay: str | None = None) -> ModuleLoader:
        """Build the model of ``--model`` in the replay dtype (``--dtype`` ``replay``, else
        the compute dtype), in eval mode."""
        dtype = resolve_replay_dtype(activation_dtype, replay)
        built = build_model(spec)
        built.module.to(dtype).eval()
        return cls(activation_dtype=activation_dtype, template=built, spec=spec,
                   replay=dtype_name(dtype))

    def read(self, source: CheckpointSource, fetched: Fetched, run: RunOptions) -> None:
        _read_state(fetched, run)

    def load(self, fetched: Fetched) -> StepModel:
        template = self.model()
        try:
            module = copy.deepcopy(template.module)
        except Exception as err:  # a user module that cannot be copied
            raise ModelBuildError(f"model {template.origin!r} cannot be copied for step "
                                  f"{fetched.ref.step} ({err})", step=fetched.ref.step) from err
        built = BuiltModel(module, origin=template.origin, key_mapper=template.key_mapper)
        return StepModel(built, load_weights(built, dict(fetched.state), step=fetched.ref.step))

    def rebuilt(self) -> ModelLoader:
        return self if self.template is not None else self.create(
            self.spec, self.activation_dtype, self.replay)


@dataclass(frozen=True)
class TransformersLoader(_Loader):
    """``--model hf``: transformers builds the template from ``config.json`` and reads each
    checkpoint in the compute dtype itself."""

    kind: ClassVar[LoaderKind] = "transformers"
    residual_stream: ClassVar[bool] = True
    config_dir: Path | None = None

    @classmethod
    def create(cls, config_dir: Path | None, activation_dtype: str, replay: str | None = None,
               *, trust_remote_code: bool = False) -> TransformersLoader:
        """The model of ``config_dir`` in the replay dtype (``--dtype`` ``replay``, else the
        checkpoint's own as the config declares it): its weights when the folder holds them,
        else the architecture of ``config.json`` with random ones (``build_template``)."""
        from flq_audit.models.hf import build_template

        if config_dir is None:
            raise ModelBuildError("--model hf needs checkpoint folders holding config.json")
        dtype = resolve_replay_dtype(activation_dtype, replay, config_dtype(config_dir))
        built = build_template(config_dir, trust_remote_code=trust_remote_code, dtype=dtype)
        return cls(activation_dtype=activation_dtype, template=built, config_dir=config_dir,
                   replay=dtype_name(dtype))

    def read(self, source: CheckpointSource, fetched: Fetched, run: RunOptions) -> None:
        """Load the step's model in the replay dtype; when that rounds the files' tensors,
        the state maps the weights to the files' own tensors (read on access)."""
        from flq_audit.models.hf import load_hf_checkpoint

        given = source.config_dir(fetched.ref)
        folder = Path(given) if given is not None else fetched.paths[0].parent
        fetched.built = load_hf_checkpoint(folder, step=fetched.ref.step,
                                           trust_remote_code=run.trust_remote_code,
                                           dtype=self.dtype)
        tensors = FileTensors(folder, fetched.built.module, step=fetched.ref.step)
        if tensors.needed(self.dtype):
            fetched.state = tensors

    def load(self, fetched: Fetched) -> StepModel:
        if not isinstance(fetched.built, BuiltModel):
            raise ModelBuildError(f"step {fetched.ref.step}: no transformers model was loaded",
                                  step=fetched.ref.step)
        return StepModel(fetched.built, fetched.state)


@dataclass(frozen=True)
class WeightsLoader(_Loader):
    """``--weights-only``: each step's state dict, no module, no replay."""

    kind: ClassVar[LoaderKind] = "weights"

    def read(self, source: CheckpointSource, fetched: Fetched, run: RunOptions) -> None:
        _read_state(fetched, run)

    def load(self, fetched: Fetched) -> StepModel:
        return StepModel(None, fetched.state)

    def training_copy(self, built: BuiltModel, state: Mapping[str, Any]) -> nn.Module:
        raise ModelBuildError("a weights-only audit has no model to train")


def model_loader(spec: str, config_dir: Path | None, *, activation_dtype: str,
                 replay_dtype: str | None = None, trust_remote_code: bool = False) -> ModelLoader:
    """The loader for ``--model SPEC``: ``hf`` (transformers), else a spec or factory;
    ``replay_dtype`` is ``--dtype``."""
    if spec == "hf":
        return TransformersLoader.create(config_dir, activation_dtype, replay_dtype,
                                         trust_remote_code=trust_remote_code)
    return ModuleLoader.create(spec, activation_dtype, replay_dtype)


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.bfloat16`` → ``"bfloat16"``."""
    return str(dtype).removeprefix("torch.")


def replay_config(loader: ModelLoader) -> dict[str, str]:
    """The store's record of the replay dtype: ``{"replay_dtype": NAME}`` when it is not the
    legacy one (:func:`compute_dtype`), else nothing (a store made before ``--dtype``
    existed keeps its fingerprint)."""
    if loader.kind == "weights" or loader.dtype == compute_dtype(loader.activation_dtype):
        return {}
    return {"replay_dtype": dtype_name(loader.dtype)}


__all__ = ["LoaderKind", "ModelLoader", "ModuleLoader", "StepModel", "TransformersLoader",
           "WeightsLoader", "compute_dtype", "dtype_name", "model_loader", "replay_config",
           "resolve_replay_dtype", "training_module"]
