"""What the plan takes when an option is not given: the model and probe files of a local
folder, a text probe's tokenizer and its pooling (chosen from the model)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from flq_audit.errors import FlqAuditError, ModelNotFoundError, ProbeError
from flq_audit.models import BuiltModel
from flq_audit.models.hf import default_pooling
from flq_audit.options import TextProbeOptions
from flq_audit.sources import CheckpointSource

DEFAULT_MODEL_FILE = "model_spec.json"
DEFAULT_PROBE_FILE = "probe.npz"


def default_model(src: CheckpointSource, root: Path, folder: Path | None) -> str:
    """`SOURCE/model_spec.json`, else `hf` for transformers folders, else a clear error."""
    if root.is_dir() and (root / DEFAULT_MODEL_FILE).is_file():
        return str(root / DEFAULT_MODEL_FILE)
    if folder is not None and (folder / "config.json").is_file():
        return "hf"
    return default_file(src, root, DEFAULT_MODEL_FILE, "--model", ModelNotFoundError)


def resolved_pooling(
    text: TextProbeOptions, built: BuiltModel
) -> tuple[TextProbeOptions, str]:
    """The text options with the pooling the audit uses, and where that pooling came from."""
    if text.pooling is not None:
        return text, "--pooling"
    if text.task != "sequence":  # rows are tokens: nothing is pooled
        return replace(text, pooling="cls"), f"unused by the {text.task} task"
    pooling, why = default_pooling(built.module)
    return replace(text, pooling=pooling), why  # type: ignore[arg-type]  # one of POOLINGS


def text_probe(spec: str, folder: Path | None, text: TextProbeOptions) -> Any:
    if folder is None:
        raise ProbeError(
            f"text probe {spec!r} needs a tokenizer, and the checkpoints have no folder with "
            "tokenizer files", hint="Text probes work with transformers checkpoints.",
        )
    from transformers import AutoTokenizer

    from flq_audit.models.hf import quiet_transformers
    from flq_audit.probes.text import load_text_probe

    try:
        with quiet_transformers():
            tokenizer = AutoTokenizer.from_pretrained(str(folder))
    except Exception as err:
        raise ProbeError(f"no usable tokenizer in {str(folder)!r} ({err})", path=folder) from err
    return load_text_probe(
        spec, tokenizer, task=text.task, text_column=text.text_column,
        label_column=text.label_column, pooling=text.pooling or "cls",
        max_length=text.max_length, top_k=text.top_k,
    )


#: What each defaulted option takes (said when its default file is missing).
_TAKES = {
    "--model": "a JSON spec (model_spec.json) or file.py:function",
    "--probe": "digits, swissroll, a .npz/.safetensors/.pt file or a .jsonl/.csv text probe",
}
#: Where the options of the audit are listed.
AUDIT_HELP = "`flq-audit audit --help`"


def default_file(
    src: CheckpointSource, root: Path, name: str, flag: str, error: type[FlqAuditError]
) -> str:
    """``root/name`` when the source is a local folder that holds it; else a clear error."""
    candidate = root / name
    if root.is_dir() and candidate.is_file():
        return str(candidate)
    takes = _TAKES.get(flag, "a value")
    if not root.is_dir():  # a Hub repo (or another remote source) has no default files
        weights_only = " or --weights-only (alias --no-probe) for weight Grams only" \
            if flag == "--probe" else ""
        raise error(
            f"{src.describe()} is a {src.name} source, not a local folder: it has no default "
            f"{name}; pass {flag}{weights_only}",
            hint=f"{flag} takes {takes} (see {AUDIT_HELP}).",
        )
    raise error(
        f"no {flag} given and {str(candidate)!r} does not exist",
        hint=f"Pass {flag} ({takes}); see {AUDIT_HELP}.",
    )
