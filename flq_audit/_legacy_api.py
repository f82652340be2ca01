"""The 0.1 keyword arguments of :func:`flq_audit.api.audit` (``layers=``, ``fl_loss=``, …),
folded onto the options objects with a ``DeprecationWarning``."""

from __future__ import annotations

import warnings
from typing import Any

from flq_audit.errors import OptionError
from flq_audit.options import CaptureOptions, FLOptions, RunOptions, SourceOptions, TextProbeOptions

_LEGACY = {
    "capture": {"layers": "layers", "activation_dtype": "activation_dtype",
                "gram_dtype": "gram_dtype", "max_samples": "max_samples",
                "hidden_states": "hidden_states"},
    "run": {"batch_size": "batch_size", "device": "device", "overwrite": "overwrite",
            "trust_pickle": "trust_pickle", "trust_remote_code": "trust_remote_code"},
    "hub": {"revision_pattern": "revision_pattern", "subfolders": "subfolders",
            "template_steps": "template_steps", "cache": "cache", "offline": "offline"},
    "text": {"text_task": "task", "pooling": "pooling", "text_column": "text_column",
             "label_column": "label_column", "max_length": "max_length", "top_k": "top_k"},
}
_LEGACY_FL = ("fl_loss", "fl_lr", "fl_batches")


def fold_legacy(
    legacy: dict[str, Any], capture: CaptureOptions | None, hub: SourceOptions | None,
    text: TextProbeOptions | None, fl: FLOptions | None, run: RunOptions | None,
    weights_only: bool,
) -> tuple[Any, ...]:
    """Map the 0.1 keyword arguments of ``audit`` onto the option objects."""
    known = {name for group in _LEGACY.values() for name in group} | {*_LEGACY_FL, "no_probe"}
    unknown = sorted(set(legacy) - known)
    if unknown:
        raise TypeError(f"audit() got unexpected keyword argument(s) {unknown}")
    warnings.warn("audit(): pass CaptureOptions, RunOptions, SourceOptions, TextProbeOptions and "
                  f"FLOptions instead of {sorted(legacy)}", DeprecationWarning, stacklevel=3)
    given = {"capture": capture, "run": run, "hub": hub, "text": text}
    classes = {"capture": CaptureOptions, "run": RunOptions, "hub": SourceOptions,
               "text": TextProbeOptions}
    built: dict[str, Any] = dict(given)
    for group, names in _LEGACY.items():
        fields = {names[k]: v for k, v in legacy.items() if k in names and v is not None}
        if not fields:
            continue
        if given[group] is not None:
            raise OptionError(f"give either {group}= or {sorted(fields)}, not both")
        if group == "capture" and "layers" in fields:
            fields["layers"] = tuple(fields["layers"])
        if group == "hub" and fields.get("template_steps") is not None:
            fields["template_steps"] = tuple(fields["template_steps"])
        built[group] = classes[group](**fields)
    fl_args = [legacy.get(name) for name in _LEGACY_FL]
    if any(arg is not None for arg in fl_args):
        if fl is not None:
            raise OptionError("give either fl= or fl_loss/fl_lr/fl_batches, not both")
        if any(arg is None for arg in fl_args):
            raise OptionError("the FL residual needs all of fl_loss, fl_lr and fl_batches "
                              "(--fl-loss, --fl-lr, --fl-batches): the training provenance")
        loss, lr, batches = fl_args
        fl = FLOptions.from_files(str(loss), lr if isinstance(lr, int | float) else str(lr),
                                  str(batches))
    weights_only = weights_only or bool(legacy.get("no_probe"))
    return built["capture"], built["hub"], built["text"], fl, built["run"], weights_only
