"""Resolve everything an audit needs before any checkpoint is read: the plan."""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from flq_audit._tags import tag_pairs
from flq_audit.audit.defaults import (
    DEFAULT_PROBE_FILE,
    default_file,
    default_model,
    resolved_pooling,
    text_probe,
)
from flq_audit.audit.extensions import named_extensions
from flq_audit.audit.extensions.base import StepExtension
from flq_audit.audit.extensions.fl import FeatureLearningResidual
from flq_audit.audit.extensions.hidden_states import HiddenStates, require_transformers
from flq_audit.audit.extensions.nonfinite import NonFiniteWeights
from flq_audit.audit.extensions.predictions import ClassPredictions
from flq_audit.audit.loaders import ModelLoader, WeightsLoader, model_loader, replay_config
from flq_audit.audit.moved import MovedStep, already_done
from flq_audit.audit.store_name import default_store
from flq_audit.capture import (
    layer_infos,
    output_classes,
    select_layers,
    weight_layer_infos,
    weight_matrix,
)
from flq_audit.capture.roles import layer_roles
from flq_audit.errors import (
    OptionError,
    ProbeNotFoundError,
    ProbeShapeError,
    StoreMismatchError,
    UnauditedFilesWarning,
)
from flq_audit.models import BuiltModel
from flq_audit.options import (
    DEFAULT_CAPTURE,
    DEFAULT_RUN,
    CaptureOptions,
    FLOptions,
    RunOptions,
    SourceOptions,
    TextProbeOptions,
    fingerprint_of,
)
from flq_audit.probes import Probe, load_probe
from flq_audit.probes.text import TEXT_SUFFIXES
from flq_audit.sources import (
    CheckpointRef,
    CheckpointSource,
    LeftOut,
    open_source,
    select_steps,
)
from flq_audit.store import (
    LayerInfo,
    ProbeSummary,
    StoreLayout,
    StoreLocation,
    steps_to_append,
    store_action,
)
from flq_audit.store._grams import layout_forms

WEIGHTS_ONLY_MODEL = "none (weights only)"


@dataclass(frozen=True)
class AuditPlan:
    """What an audit will do, resolved before any checkpoint is read; never changed after.

    Nothing an audit does changes a plan: the model it holds (``loader.template``) keeps
    its weights, dtype and mode; each step loads into a model of its own
    (:meth:`~flq_audit.audit.loaders.ModelLoader.load`). Returned as is by
    ``audit(..., dry_run=True)`` and run by :func:`flq_audit.api.run_audit`.
    """

    source: CheckpointSource
    refs: tuple[CheckpointRef, ...]
    all_steps: tuple[int, ...]
    store: StoreLocation
    model: str  # the --model spec: a file, "hf", or WEIGHTS_ONLY_MODEL
    #: Who builds, converts and loads the per-step model (chosen once, here).
    loader: ModelLoader
    probe: Probe | Any | None  # an array or text probe; None in weights-only audits
    layers: tuple[LayerInfo, ...]
    capture: CaptureOptions
    layout: StoreLayout
    text: TextProbeOptions | None = None
    fl: FLOptions | None = None
    extensions: tuple[StepExtension, ...] = ()
    already_done: tuple[int, ...] = ()
    #: What the run will do with ``store``: ``new``, ``resume``, ``replace`` or ``refused``.
    store_status: Literal["new", "resume", "replace", "refused"] = "new"
    #: Why the run will refuse ``store`` (the error it will raise), when ``refused``.
    store_refusal: StoreMismatchError | None = None
    #: Entries of the source that are not audited, with the reason and the option to use.
    left_out: tuple[LeftOut, ...] = ()
    #: Text probes: where ``text.pooling`` came from (``--pooling`` or the model's default).
    pooling_from: str | None = None
    #: Done steps whose branch moved since they were written (re-audited with
    #: ``--reaudit-moved``, else kept and named in a warning).
    moved: tuple[MovedStep, ...] = ()
    #: Whether the run re-audits ``moved`` (``--reaudit-moved``).
    reaudit_moved: bool = False
    #: Steps the source gained since the store was made: the run appends them to its axis.
    appended: tuple[int, ...] = ()

    @property
    def built(self) -> BuiltModel | None:
        """The model as built at plan time (``loader.template``); ``None`` without one."""
        return self.loader.template

    @property
    def config(self) -> dict[str, Any]:
        """The capture configuration stored in the store (part of its fingerprint)."""
        return dict(self.layout.capture_config)

    def summary(self) -> dict[str, Any]:
        """A JSON-ready description (what ``--dry-run --json`` prints)."""
        return {
            "source": self.source.describe(),
            "store": str(self.store),
            "store_exists": self.store.exists(),
            "store_status": self.store_status,
            "store_refusal": None if self.store_refusal is None else {
                "message": str(self.store_refusal), "exit_code": self.store_refusal.exit_code},
            "steps": [r.step for r in self.refs],
            "already_done": list(self.already_done),
            "new_steps": [r.step for r in self.refs if r.step not in set(self.already_done)],
            "appended": list(self.appended),
            "moved": [{"step": m.step, "label": m.label, "stored_commit": m.stored,
                       "current_commit": m.current, "reaudit": self.reaudit_moved}
                      for m in self.moved],
            "checkpoints": [
                {"step": r.step, "label": r.label, "step_from": r.extra.get("step_from", "name"),
                 "format": r.fmt, "bytes": r.size_bytes,
                 "files": [Path(f).name for f in r.files], "revision": r.revision,
                 "commit": r.commit}
                for r in self.refs
            ],
            "checkpoint_bytes": sum(r.size_bytes for r in self.refs),
            "duplicates": {str(s): o for s, o in self.layout.duplicates},
            "probe": None if self.probe is None else {
                "name": self.probe.name, "n_samples": self.probe.n_samples,
                "kind": self.probe.kind, "num_classes": self.probe.num_classes,
                "fingerprint": self.probe.fingerprint, **self._text_summary()},
            "layers": [{"name": li.name, "kind": li.kind, "width": li.width,
                        "gram_width": li.gram_width, "gram_form": form, "role": role}
                       for li, form, role in zip(self.layers, layout_forms(self.layout),
                                                 layer_roles(self), strict=True)],
            "extensions": [ext.name for ext in self.extensions],
            "not_audited": [{"name": e.name, "reason": e.reason, "include": e.include or None}
                            for e in self.left_out],
            "store_bytes_estimate": self.layout.estimated_bytes(),
            "store_bytes_per_step": self.layout.bytes_per_step(),
            "sample_chunk": self.layout.sample_chunk,
            "capture_config": self.config,
        }


    def _text_summary(self) -> dict[str, Any]:
        """A text probe's task and pooling, and where the pooling came from."""
        if self.text is None:
            return {}
        return {"task": self.text.task, "pooling": self.text.pooling,
                "pooling_from": self.pooling_from}


def capture_config(
    model: str, layers: Sequence[LayerInfo], capture: CaptureOptions,
    text: TextProbeOptions | None = None, fl: FLOptions | None = None,
) -> dict[str, Any]:
    """The store's ``capture_config``: the options that decide what is stored, derived from
    the options objects' fields (:func:`~flq_audit.options.fingerprint_of`)."""
    out: dict[str, Any] = {"model": model, "layers": [li.name for li in layers],
                           **fingerprint_of(capture)}
    if text is not None:
        out["text"] = text.to_json_dict()
    if fl is not None:
        out["fl"] = fl.to_json_dict()
    return out


def plan_audit(
    source: str,
    *,
    steps: str = "all",
    model: str | None = None,
    probe: str | None = None,
    weights_only: bool = False,
    out: str | Path | StoreLocation | None = None,
    storage_options: dict[str, Any] | None = None,
    capture: CaptureOptions = DEFAULT_CAPTURE,
    hub: SourceOptions | None = None,
    text: TextProbeOptions | None = None,
    fl: FLOptions | None = None,
    run: RunOptions = DEFAULT_RUN,
    extensions: Sequence[StepExtension] = (),
    tags: Mapping[str, Any] | Sequence[str] | None = None,
) -> AuditPlan:
    """Resolve source, steps, model, probe, layers and extensions; check them all.

    The probe is replayed once through the model built at plan time and every extension's
    ``preflight`` runs, so that bad input fails before any checkpoint is read.
    """
    pairs = tag_pairs(tags)  # a malformed tag is refused before the source is read
    src = open_source(source, **(hub.source_kwargs() if hub is not None else {}))
    all_refs = src.list_refs()
    wanted = set(select_steps([r.step for r in all_refs], steps))
    refs = tuple(r for r in all_refs if r.step in wanted)
    root = Path(source).expanduser()
    folder = checkpoint_folder(src, refs[0]) if refs else None
    store = StoreLocation.parse(out if out is not None else default_store(root), storage_options)
    if weights_only:
        plan = _weights_only_plan(src, refs, all_refs, folder, store, capture)
    else:
        plan = _model_plan(src, refs, all_refs, root, folder, store, model=model, probe=probe,
                           capture=capture, text=text, fl=fl, run=run)
    plan = replace(_with_extensions(plan, list(extensions), named=capture.extensions),
                   left_out=tuple(src.left_out()))
    plan = replace(plan, layout=replace(plan.layout, tags=pairs))
    for ext in plan.extensions:
        ext.preflight(plan)
    return _with_store_status(plan, overwrite=run.overwrite, reaudit_moved=run.reaudit_moved)


def _with_store_status(plan: AuditPlan, *, overwrite: bool, reaudit_moved: bool) -> AuditPlan:
    """The plan with what the real run will do with its store (the same checks, read only)."""
    status, refusal = store_action(plan.store, plan.layout, overwrite=overwrite)
    done, moved = already_done(plan) if status == "resume" else ((), ())
    if reaudit_moved:
        done = tuple(s for s in done if s not in {m.step for m in moved})
    appended = tuple(steps_to_append(plan.store, plan.layout)) if status == "resume" else ()
    return replace(plan, store_status=status, store_refusal=refusal, already_done=done,
                   moved=moved, reaudit_moved=reaudit_moved, appended=appended)


def _model_plan(
    src: CheckpointSource, refs: tuple[CheckpointRef, ...], all_refs: list[CheckpointRef],
    root: Path, folder: Path | None, store: StoreLocation, *, model: str | None, probe: str | None,
    capture: CaptureOptions, text: TextProbeOptions | None, fl: FLOptions | None,
    run: RunOptions,
) -> AuditPlan:
    model_spec = model or default_model(src, root, folder)
    probe_spec = probe or default_file(src, root, DEFAULT_PROBE_FILE, "--probe",
                                       ProbeNotFoundError)
    loader = model_loader(str(model_spec), folder, activation_dtype=capture.activation_dtype,
                          replay_dtype=capture.replay_dtype, trust_remote_code=run.trust_remote_code)
    built = loader.model()
    pooling_from = None
    if str(probe_spec).lower().endswith(TEXT_SUFFIXES):
        text, pooling_from = resolved_pooling(text or TextProbeOptions(), built)
        loaded = text_probe(probe_spec, folder, text)
    else:
        text = None
        loaded = load_probe(probe_spec, run.probe_keys)
    if capture.max_samples is not None:
        loaded = loaded.head(capture.max_samples)
    hidden = capture.hidden_states
    try:
        chosen = select_layers(built.module, capture.layers, probe=loaded)
        if hidden:
            require_transformers(loader)
        infos = layer_infos(built.module, chosen, loaded, hidden_states=hidden)
    except ProbeShapeError as err:  # name the probe file
        raise ProbeShapeError(f"probe {str(probe_spec)!r}: {err.message.removeprefix('probe ')}",
                              path=probe_spec, hint=err.hint) from err
    builtin: list[StepExtension] = [NonFiniteWeights()]
    predictions, classifier = _classification_outputs(loader, loaded, chosen, infos)
    if loader.kind == "transformers" and fl is None:  # steps load models of their own
        from flq_audit.models.hf import release_weights

        release_weights(built)
    if predictions:
        builtin.append(ClassPredictions(classifier))
    if hidden:
        builtin.append(HiddenStates())
    if fl is not None:
        builtin.append(FeatureLearningResidual(fl))
    layout = StoreLayout(
        **_step_axis(src, refs, all_refs),
        source=src.describe(),
        layers=tuple(infos),
        probe=ProbeSummary.of(loaded),
        capture_config=capture_config(str(model_spec), infos, capture, text, fl) | replay_config(loader),
        activation_dtype=capture.activation_dtype,
        gram_dtype=capture.gram_dtype,
        grams=capture.grams,
    )
    return AuditPlan(
        source=src, refs=refs, all_steps=tuple(r.step for r in all_refs), store=store,
        model=str(model_spec), loader=loader, probe=loaded, layers=tuple(infos), capture=capture,
        layout=layout, text=text, fl=fl, extensions=tuple(builtin), pooling_from=pooling_from,
    )


def _with_extensions(plan: AuditPlan, extra: list[StepExtension],
                     named: Sequence[str] = ()) -> AuditPlan:
    """Add the extensions named by ``--extension`` (part of the fingerprint) and user
    extensions, and the variables and attributes all extensions declare."""
    extensions = (*plan.extensions, *named_extensions(named), *extra)
    names = [ext.name for ext in extensions]
    if len(set(names)) != len(names):
        raise ValueError(f"two extensions share a name: {names}")
    variables = tuple(spec for ext in extensions for spec in ext.variables(plan.layout))
    attrs = tuple((k, v) for ext in extensions for k, v in ext.store_attrs().items())
    config = plan.layout.capture_config | ({"extensions": list(named)} if named else {})
    layout = replace(plan.layout, variables=variables, attrs=attrs, capture_config=config)
    return replace(plan, extensions=extensions, layout=layout)


def _weights_only_plan(
    src: CheckpointSource, refs: tuple[CheckpointRef, ...], all_refs: list[CheckpointRef],
    folder: Path | None, store: StoreLocation, capture: CaptureOptions,
) -> AuditPlan:
    """Grams only: layers from the first checkpoint's tensor names and shapes."""
    shapes = src.tensor_shapes(refs[0])
    model_type = None
    if folder is not None and (folder / "config.json").is_file():
        model_type = json.loads((folder / "config.json").read_text()).get("model_type")
    infos = weight_layer_infos(shapes, model_type=model_type, patterns=capture.layers)
    if capture.grams == "none":
        raise OptionError("--weights-only --grams none keeps nothing: a weights-only store "
                          "holds only Grams",
                          hint="Give --grams compact, full or spectrum, or drop --weights-only.")
    options = CaptureOptions(layers=capture.layers, gram_dtype=capture.gram_dtype,
                             grams=capture.grams)
    layout = StoreLayout(
        **_step_axis(src, refs, all_refs), source=src.describe(), layers=tuple(infos),
        probe=None, capture_config=capture_config(WEIGHTS_ONLY_MODEL, infos, options),
        gram_dtype=capture.gram_dtype, grams=capture.grams,
    )
    return AuditPlan(source=src, refs=refs, all_steps=tuple(r.step for r in all_refs),
                     store=store, model=WEIGHTS_ONLY_MODEL, loader=WeightsLoader(), probe=None,
                     layers=tuple(infos), capture=options, layout=layout,
                     extensions=(NonFiniteWeights(),))


def _classification_outputs(
    loader: ModelLoader, probe: Any, chosen: dict, infos: list[LayerInfo]
) -> tuple[bool, str | None]:
    """Whether to store predictions (NC4) and which layer is the classifier (NC3)."""
    if not isinstance(probe, Probe) or probe.kind != "classes" or not loader.class_scores:
        return False, None
    classes = output_classes(loader.model().module, probe)
    if classes != probe.num_classes:
        return False, None
    for info in reversed(infos):
        if weight_matrix(chosen[info.name]).shape[0] == classes:
            return True, info.name
    return True, None


def left_out_message(plan: AuditPlan) -> str | None:
    """One line listing every entry of the source the audit leaves out (``None``: none)."""
    if not plan.left_out:
        return None
    lines = [f"{e.name}: {e.reason}" + (f" (include it with {e.include})" if e.include else "")
             for e in plan.left_out]
    return f"{len(lines)} file(s) in the source are not audited: " + "; ".join(lines)


def warn_left_out(plan: AuditPlan) -> None:
    """One :class:`UnauditedFilesWarning` that lists what the audit leaves out (if anything)."""
    message = left_out_message(plan)
    if message is not None:
        warnings.warn(message, UnauditedFilesWarning, stacklevel=2)


def _step_axis(src: CheckpointSource, refs: Sequence[CheckpointRef],
               all_refs: Sequence[CheckpointRef]) -> dict[str, Any]:
    """The store's step axis: every step the source lists (a later audit of another
    selection fills the store in), the selected ones to write, and byte-identical steps."""
    return {"steps": tuple(r.step for r in all_refs), "selected": tuple(r.step for r in refs),
            "labels": tuple(r.label for r in all_refs),
            "commits": tuple(r.commit or "" for r in all_refs),
            "duplicates": _duplicates(src, all_refs)}


def _duplicates(src: CheckpointSource, refs: Sequence[CheckpointRef]) -> tuple[tuple[int, int], ...]:
    """Steps whose weight files are identical to an earlier listed step's."""
    if not src.supports_duplicates:
        return ()
    return tuple(sorted(src.duplicates(list(refs)).items()))


def checkpoint_folder(source: CheckpointSource, ref: CheckpointRef) -> Path | None:
    """The folder holding a checkpoint's config/tokenizer files, when it has one."""
    folder = source.config_dir(ref)
    return None if folder is None else Path(folder)
