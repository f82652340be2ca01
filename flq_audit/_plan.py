"""Resolve everything an audit needs before any checkpoint is read: the plan."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from flq_audit.capture import (
    LayerInfo,
    layer_infos,
    output_classes,
    select_layers,
    weight_layer_infos,
    weight_matrix,
)
from flq_audit.errors import (
    FlqAuditError,
    ModelBuildError,
    ModelNotFoundError,
    OptionError,
    ProbeError,
    ProbeNotFoundError,
)
from flq_audit.feature_learning import FLConfig
from flq_audit.models import BuiltModel, build_model
from flq_audit.models.hf import build_hf_model
from flq_audit.probes import Probe, load_probe
from flq_audit.probes.text import TEXT_SUFFIXES
from flq_audit.sources import CheckpointRef, CheckpointSource, open_source, select_steps
from flq_audit.store import ProbeSummary, StoreLayout
from flq_audit.weights import tensor_shapes

DEFAULT_MODEL_FILE = "model_spec.json"
DEFAULT_PROBE_FILE = "probe.npz"


@dataclass(frozen=True)
class TextOptions:
    """How a text probe becomes rows (see :mod:`flq_audit.probes.text`)."""

    task: str = "sequence"
    pooling: str = "cls"
    text_column: str = "text"
    label_column: str = "label"
    max_length: int = 128
    top_k: int = 50


@dataclass(frozen=True)
class CaptureConfig:
    """How activations are captured; serialised into the store's attrs."""

    model: str
    layers: tuple[str, ...]
    activation_dtype: str = "float32"
    gram_dtype: str = "float32"
    max_samples: int | None = None
    fl: FLConfig | None = None
    text: TextOptions | None = None
    trust_remote_code: bool = False
    hidden_states: bool = False

    def to_json_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "model": self.model, "layers": list(self.layers),
            "activation_dtype": self.activation_dtype, "gram_dtype": self.gram_dtype,
            "max_samples": self.max_samples,
        }
        if self.text is not None:
            out["text"] = asdict(self.text)
        if self.hidden_states:
            out["hidden_states"] = True
        if self.fl is not None:
            out["fl"] = self.fl.to_json_dict()
        return out


@dataclass
class AuditPlan:
    """What an audit will do: returned as is by ``audit(..., dry_run=True)``."""

    source: CheckpointSource
    refs: list[CheckpointRef]
    all_steps: list[int]
    store: Path
    built: BuiltModel | None  # None in a weights-only audit
    probe: Probe | None  # None in a weights-only audit
    layers: list[LayerInfo]
    config: CaptureConfig
    layout: StoreLayout
    already_done: list[int] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        """A JSON-ready description (what ``--dry-run --json`` prints)."""
        return {
            "source": self.source.describe(),
            "store": str(self.store),
            "store_exists": self.store.exists(),
            "steps": [r.step for r in self.refs],
            "already_done": self.already_done,
            "checkpoints": [
                {"step": r.step, "label": r.label, "format": r.fmt, "bytes": r.size_bytes,
                 "files": [Path(f).name for f in r.files], "revision": r.revision,
                 "commit": r.commit}
                for r in self.refs
            ],
            "checkpoint_bytes": sum(r.size_bytes for r in self.refs),
            "duplicates": {str(s): o for s, o in self.layout.duplicates},
            "probe": None if self.probe is None else {
                "name": self.probe.name, "n_samples": self.probe.n_samples,
                "kind": self.probe.kind, "num_classes": self.probe.num_classes,
                "fingerprint": self.probe.fingerprint},
            "layers": [
                {"name": li.name, "kind": li.kind, "width": li.width, "gram_width": li.gram_width}
                for li in self.layers
            ],
            "store_bytes_estimate": self.layout.estimated_bytes(),
            "sample_chunk": self.layout.sample_chunk,
            "capture_config": self.config.to_json_dict(),
        }


def make_plan(
    source: str,
    *,
    steps: str,
    model: str | None,
    probe: str | None,
    layers: list[str] | None,
    out: str | Path | None,
    activation_dtype: str,
    gram_dtype: str,
    max_samples: int | None,
    fl: FLConfig | None = None,
    text: TextOptions | None = None,
    trust_remote_code: bool = False,
    no_probe: bool = False,
    source_options: dict[str, Any] | None = None,
    hidden_states: bool = False,
) -> AuditPlan:
    """Resolve source, steps, model, probe and layers; validate the probe against the model."""
    src = open_source(source, **(source_options or {}))
    all_refs = src.list_refs()
    wanted = set(select_steps([r.step for r in all_refs], steps))
    refs = [r for r in all_refs if r.step in wanted]
    root = Path(source).expanduser()
    folder = checkpoint_folder(src, refs[0]) if refs else None
    if no_probe:
        return _with_duplicates(
            _weights_only_plan(src, refs, all_refs, root, folder, layers, out, gram_dtype))
    model_spec = model or _default_model(root, folder)
    probe_spec = probe or _default_file(root, DEFAULT_PROBE_FILE, "--probe", ProbeNotFoundError)
    if model_spec == "hf":
        if folder is None:
            raise ModelBuildError("--model hf needs checkpoint folders holding config.json")
        built = build_hf_model(folder, trust_remote_code=trust_remote_code)
    else:
        built = build_model(model_spec)
    if str(probe_spec).lower().endswith(TEXT_SUFFIXES):
        text = text or TextOptions()
        loaded = _text_probe(probe_spec, folder, text)
    else:
        text = None
        loaded = load_probe(probe_spec)
    if max_samples is not None:
        if max_samples < 1:
            raise ProbeError(f"--max-samples must be >= 1, got {max_samples}")
        loaded = loaded.head(max_samples)
    chosen = select_layers(built.module, layers)
    if hidden_states and not built.origin.startswith("hf:"):
        raise OptionError("--hidden-states needs a transformers model (--model hf)")
    infos = layer_infos(built.module, chosen, loaded, hidden_states=hidden_states)
    predictions, classifier = _classification_outputs(built, loaded, chosen, infos)
    config = CaptureConfig(
        model=str(model_spec), layers=tuple(li.name for li in infos),
        activation_dtype=activation_dtype, gram_dtype=gram_dtype, max_samples=max_samples, fl=fl,
        text=text, trust_remote_code=trust_remote_code, hidden_states=hidden_states,
    )
    if fl is not None:
        _check_fl(fl, loaded, [r.step for r in refs])
    store = Path(out) if out is not None else default_store(root)
    layout = StoreLayout(
        source=src.describe(),
        steps=tuple(r.step for r in refs),
        labels=tuple(r.label for r in refs),
        commits=tuple(r.commit or "" for r in refs),
        layers=tuple(infos),
        probe=ProbeSummary.of(loaded),
        capture_config=config.to_json_dict(),
        activation_dtype=activation_dtype,
        gram_dtype=gram_dtype,
        fl_enabled=fl is not None,
        predictions=predictions,
        classifier=classifier,
    )
    return _with_duplicates(AuditPlan(
        source=src, refs=refs, all_steps=[r.step for r in all_refs], store=store, built=built,
        probe=loaded, layers=infos, config=config, layout=layout,
    ))


def _weights_only_plan(
    src: CheckpointSource, refs: list[CheckpointRef], all_refs: list[CheckpointRef], root: Path,
    folder: Path | None, layers: list[str] | None, out: str | Path | None, gram_dtype: str,
) -> AuditPlan:
    """Grams only: layers from the first checkpoint's tensor names and shapes."""
    shapes_of = getattr(src, "tensor_shapes", None)
    shapes = shapes_of(refs[0]) if callable(shapes_of) else tensor_shapes(src.fetch(refs[0]))
    model_type = None
    if folder is not None and (folder / "config.json").is_file():
        model_type = json.loads((folder / "config.json").read_text()).get("model_type")
    infos = weight_layer_infos(shapes, model_type=model_type, patterns=layers)
    config = CaptureConfig(model="none (weights only)", layers=tuple(i.name for i in infos),
                           gram_dtype=gram_dtype)
    layout = StoreLayout(
        source=src.describe(), steps=tuple(r.step for r in refs),
        labels=tuple(r.label for r in refs), commits=tuple(r.commit or "" for r in refs),
        layers=tuple(infos), probe=None, capture_config=config.to_json_dict(),
        gram_dtype=gram_dtype,
    )
    store = Path(out) if out is not None else default_store(root)
    return AuditPlan(source=src, refs=refs, all_steps=[r.step for r in all_refs], store=store,
                     built=None, probe=None, layers=infos, config=config, layout=layout)


def _classification_outputs(
    built: BuiltModel, probe: Any, chosen: dict, infos: list[LayerInfo]
) -> tuple[bool, str | None]:
    """Whether to store predictions (NC4) and which layer is the classifier (NC3)."""
    if not isinstance(probe, Probe) or probe.kind != "classes" or built.origin.startswith("hf:"):
        return False, None
    classes = output_classes(built.module, probe)
    if classes != probe.num_classes:
        return False, None
    for info in reversed(infos):
        if weight_matrix(chosen[info.name]).shape[0] == classes:
            return True, info.name
    return True, None


def default_store(root: Path) -> Path:
    """``./<source name>.zarr`` (a repo template's ``{step}`` dropped)."""
    name = root.expanduser().resolve().name.replace("{step}", "").strip("-_") or "flq-audit"
    return Path.cwd() / f"{name}.zarr"


def _with_duplicates(plan: AuditPlan) -> AuditPlan:
    """Flag selected steps whose weight files are identical to an earlier selected step's."""
    find = getattr(plan.source, "duplicates", None)
    if not callable(find):
        return plan
    found = {s: o for s, o in find(plan.refs).items()}
    if found:
        plan.layout = replace(plan.layout, duplicates=tuple(sorted(found.items())))
    return plan


def checkpoint_folder(source: CheckpointSource, ref: CheckpointRef) -> Path | None:
    """The folder holding a checkpoint's config/tokenizer files, when it has one."""
    config_dir = getattr(source, "config_dir", None)
    if callable(config_dir):
        folder = config_dir(ref)
        return None if folder is None else Path(folder)
    folder = Path(ref.files[0]).parent
    return folder if (folder / "config.json").is_file() else None


def _default_model(root: Path, folder: Path | None) -> str:
    if root.is_dir() and (root / DEFAULT_MODEL_FILE).is_file():
        return str(root / DEFAULT_MODEL_FILE)
    if folder is not None and (folder / "config.json").is_file():
        return "hf"
    return _default_file(root, DEFAULT_MODEL_FILE, "--model", ModelNotFoundError)


def _text_probe(spec: str, folder: Path | None, text: TextOptions) -> Any:
    if folder is None:
        raise ProbeError(
            f"text probe {spec!r} needs a tokenizer, and the checkpoints have no folder with "
            "tokenizer files", hint="Text probes work with transformers checkpoints.",
        )
    from transformers import AutoTokenizer

    from flq_audit.probes.text import load_text_probe

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder))
    except Exception as err:
        raise ProbeError(f"no usable tokenizer in {str(folder)!r} ({err})", path=folder) from err
    return load_text_probe(
        spec, tokenizer, task=text.task, text_column=text.text_column,  # type: ignore[arg-type]
        label_column=text.label_column, pooling=text.pooling,  # type: ignore[arg-type]
        max_length=text.max_length, top_k=text.top_k,
    )


def _check_fl(fl: FLConfig, probe: Probe, steps: list[int]) -> None:
    """Refuse missing provenance before any checkpoint is read."""
    if not isinstance(probe, Probe):
        raise ProbeError("the FL residual needs an array probe (inputs, targets)")
    if fl.loss == "ce" and probe.kind != "classes":
        raise ProbeError("--fl-loss ce needs a class probe; this probe has continuous targets")
    for step in steps[:-1]:
        fl.lr_at(step)
        fl.batch_at(step, probe.n_samples)


def _default_file(root: Path, name: str, flag: str, error: type[FlqAuditError]) -> str:
    candidate = root / name
    if root.is_dir() and candidate.is_file():
        return str(candidate)
    raise error(
        f"no {flag} given and {str(candidate)!r} does not exist",
        hint=f"Pass {flag} explicitly (see `flq-audit --help`).",
    )
