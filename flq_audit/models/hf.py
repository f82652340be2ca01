"""Rebuild transformers models from a checkpoint's own ``config.json`` (extra ``flq-audit[hf]``).

The plan-time model is the first checkpoint's folder loaded like any step
(:func:`build_template`), or, when that folder holds no weights that fit, the architecture
named in ``config.architectures`` instantiated with random weights (``from_config``-style, no
download). Each checkpoint is then
loaded by transformers' ``from_pretrained``, which builds the architecture on the meta device
and assigns the checkpoint's tensors (no throw-away random initialisation per step). Models
run with ``use_cache=False``: a probe replay never reuses a KV cache. Remote code runs only
with ``trust_remote_code``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from flq_audit.errors import ModelBuildError
from flq_audit.models import BuiltModel


def _transformers():
    try:
        import transformers
    except ImportError as err:
        raise ModelBuildError(
            "this checkpoint needs transformers: pip install 'flq-audit[hf]'"
        ) from err
    return transformers


@contextmanager
def quiet_transformers() -> Iterator[None]:
    """transformers' own log lines and progress bars off while flq-audit calls it, and the
    caller's settings back afterwards (also usable as a decorator)."""
    logging = _transformers().utils.logging
    verbosity, bars = logging.get_verbosity(), logging.is_progress_bar_enabled()
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        logging.set_verbosity(verbosity)
        if bars:
            logging.enable_progress_bar()


@quiet_transformers()
def build_hf_model(
    config_dir: str | Path, *, trust_remote_code: bool = False, dtype: Any = None
) -> BuiltModel:
    """Instantiate the architecture of ``config_dir/config.json`` with random weights, in
    ``dtype`` (a torch dtype; ``None``: the config's own) as transformers builds it."""
    config_file = Path(config_dir) / "config.json"
    if not config_file.is_file():
        raise ModelBuildError(
            f"no config.json in {str(config_dir)!r}: cannot rebuild a transformers model",
            path=config_dir, hint="Pass --model with a JSON spec or a factory instead.",
        )
    transformers = _transformers()
    try:
        config = transformers.AutoConfig.from_pretrained(
            str(config_dir), trust_remote_code=trust_remote_code
        )
    except ValueError as err:
        raise ModelBuildError(
            f"{str(config_file)!r}: transformers cannot read this config ({err})",
            path=config_file,
            hint="Custom architectures need --trust-remote-code (runs code from the repo).",
        ) from err
    architectures = getattr(config, "architectures", None) or []
    model_class = getattr(transformers, architectures[0], None) if architectures else None
    try:
        if model_class is not None:
            module = model_class._from_config(config, dtype=dtype)
        else:
            module = transformers.AutoModel.from_config(
                config, trust_remote_code=trust_remote_code, dtype=dtype
            )
    except Exception as err:
        raise ModelBuildError(
            f"{str(config_file)!r}: cannot instantiate {architectures or config.model_type} "
            f"({err})", path=config_file,
        ) from err
    module.eval()
    _no_kv_cache(module)
    name = architectures[0] if architectures else type(module).__name__
    return BuiltModel(module, origin=f"hf:{name}")


def _holds_weights(folder: Path) -> bool:
    """Whether ``folder`` holds weight files transformers reads (safetensors or pickles)."""
    return any(folder.glob("*.safetensors")) or any(folder.glob("pytorch_model*.bin"))


def build_template(
    config_dir: str | Path, *, trust_remote_code: bool = False, dtype: Any = None
) -> BuiltModel:
    """The plan-time model of ``config_dir``: its own checkpoint, loaded as each step is
    (:func:`load_hf_checkpoint`), when the folder holds weights that fit its config, else
    the architecture with random weights (:func:`build_hf_model`).

    Only the template's structure is used (layers, widths, pooling), so its weights do not
    matter; loading them costs a read of the files, while a random initialisation costs a
    sampling pass over every parameter (seconds of CPU at 70 M parameters).
    """
    folder = Path(config_dir)
    if (folder / "config.json").is_file() and _holds_weights(folder):
        try:
            return load_hf_checkpoint(folder, trust_remote_code=trust_remote_code, dtype=dtype)
        except ModelBuildError:  # weights that do not fit: the step says so when it loads
            pass
    return build_hf_model(folder, trust_remote_code=trust_remote_code, dtype=dtype)


def release_weights(built: BuiltModel) -> None:
    """Move the parameters and buffers of a plan-time model to the meta device, in place.

    A transformers template is only needed for its structure once the plan-time forward
    pass has measured the layers: every step loads a model of its own. Its random weights
    would otherwise stay resident for the whole audit, as large as one more checkpoint.
    """
    built.module.to("meta")


def _no_kv_cache(module: Any) -> None:
    """Forward passes without a KV cache (a probe replay never decodes further)."""
    config = getattr(module, "config", None)
    if config is not None and hasattr(config, "use_cache"):
        config.use_cache = False


def _model_class(
    config_dir: str | Path, *, trust_remote_code: bool, dtype: Any = None
) -> tuple[Any, str]:
    """The transformers class that ``config.json`` names, and the model's origin, without
    instantiating it; falls back to building once (``AutoModel`` or remote code)."""
    transformers = _transformers()
    config_file = Path(config_dir) / "config.json"
    try:
        architectures = json.loads(config_file.read_text()).get("architectures") or []
    except (OSError, ValueError, AttributeError):
        architectures = []
    model_class = getattr(transformers, architectures[0], None) if architectures else None
    if model_class is not None and not trust_remote_code:
        return model_class, f"hf:{architectures[0]}"
    built = build_hf_model(config_dir, trust_remote_code=trust_remote_code, dtype=dtype)
    return type(built.module), built.origin


def causal_lm_reason(module: Any) -> str | None:
    """Why ``module`` is a causal (decoder-only) LM, read from its transformers config;
    ``None`` when it is not one (an encoder, an encoder-decoder, or no config at all)."""
    config = getattr(module, "config", None)
    if config is None or getattr(config, "is_encoder_decoder", False):
        return None
    name = (list(getattr(config, "architectures", None) or []) or [type(module).__name__])[0]
    if getattr(config, "is_decoder", False):
        return f"{name} has is_decoder set in its config"
    if name.endswith("ForCausalLM"):
        return f"{name} is a causal LM"
    model_type = getattr(config, "model_type", None)
    try:
        from transformers.models.auto import modeling_auto as auto
    except ImportError:
        return None
    if (model_type in auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
            and model_type not in auto.MODEL_FOR_MASKED_LM_MAPPING_NAMES):
        return f"{name}: model type {model_type!r} is decoder-only"
    return None


def default_pooling(module: Any) -> tuple[str, str]:
    """The sequence pooling a text probe gets when ``--pooling`` is not given, and why.

    A causal LM's first token has attended to nothing but itself, so its summary of the
    sequence is the last real token (``last``); other models pool their first token
    (``cls``).
    """
    reason = causal_lm_reason(module)
    if reason is not None:
        return "last", f"default for a causal LM ({reason})"
    return "cls", "default for a model that is not a causal LM"


# Buffers that older checkpoints carry and current transformers recomputes.
_BENIGN_UNEXPECTED = ("rotary_emb.inv_freq", "attn.masked_bias", "attn.bias", "position_ids")


@quiet_transformers()
def load_hf_checkpoint(
    folder: str | Path, *, step: int | None = None, trust_remote_code: bool = False,
    dtype: Any = None,
) -> BuiltModel:
    """Load one checkpoint folder (config + weights) with transformers, strictly.

    transformers applies its own key renames and tied weights; any missing, unexpected or
    shape-mismatched key it reports is an error here (benign legacy buffers excepted).
    transformers reads the weights in ``dtype`` (default float32): float64 loads a float64
    checkpoint unrounded. Pickled ``.bin`` files load with ``weights_only``.
    """
    import torch

    dtype = torch.float32 if dtype is None else dtype
    model_class, origin = _model_class(folder, trust_remote_code=trust_remote_code, dtype=dtype)
    try:
        module, info = model_class.from_pretrained(
            str(folder), local_files_only=True, output_loading_info=True,
            dtype=dtype, trust_remote_code=trust_remote_code,
        )
    except Exception as err:
        raise ModelBuildError(
            f"step {step}: transformers cannot load {str(folder)!r} ({err})", path=folder,
            step=step,
        ) from err
    missing = list(info.get("missing_keys", []))
    unexpected = [k for k in info.get("unexpected_keys", []) if not k.endswith(_BENIGN_UNEXPECTED)]
    mismatched = [str(m) for m in info.get("mismatched_keys", [])]
    if missing or unexpected or mismatched:
        raise ModelBuildError(
            f"step {step}: checkpoint {str(folder)!r} does not fit {origin}: "
            f"missing {sorted(missing)[:8]}, unexpected {sorted(unexpected)[:8]}, "
            f"mismatched {mismatched[:4]}", path=folder, step=step,
        )
    module.eval()
    _no_kv_cache(module)
    return BuiltModel(module, origin=origin)
