"""Read a checkpoint's state dict: safetensors first, weights-only torch pickles otherwise."""

from __future__ import annotations

import hashlib
import pickle
import re
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path

import torch

from flq_audit.constants import NESTED_STATE_DICT_KEYS, SAFETENSORS_EXTENSIONS
from flq_audit.errors import UnsafeCheckpointError, WeightsError

StateDict = dict[str, torch.Tensor]


def load_state_dict(
    files: Sequence[str | Path], *, trust_pickle: bool = False, step: int | None = None
) -> StateDict:
    """Load and merge the tensors of one checkpoint (one file, or several shards).

    Tensors land on the CPU whatever device they were saved from; floating tensors are
    upcast to float32 (bf16/fp16 included) so downstream math never runs in half precision.
    Shards are read one at a time and upcast as they are read: no more than one shard's
    tensors are held in their own dtype beside the merged float32 ones.

    Raises
    ------
    WeightsError
        A file is truncated, not a checkpoint, or holds no tensors.
    UnsafeCheckpointError
        A pickle needs full unpickling and ``trust_pickle`` is false.
    """
    merged: StateDict = {}
    for file in files:
        path = Path(file)
        part = (
            _load_safetensors(path, step)
            if path.suffix.lower() in SAFETENSORS_EXTENSIONS
            else _load_pickle(path, trust_pickle, step)
        )
        merged.update((key, _upcast(value)) for key, value in part.items())
        del part
    if not merged:
        raise WeightsError(
            f"step {step}: {[Path(f).name for f in files]} hold no tensors", step=step,
            path=files[0] if files else None,
        )
    return merged


def tensor_shapes(files: Sequence[str | Path], *, step: int | None = None) -> dict[str, tuple]:
    """Tensor names and shapes; safetensors headers only (no tensor data is read)."""
    shapes: dict[str, tuple] = {}
    for file in files:
        path = Path(file)
        if path.suffix.lower() in SAFETENSORS_EXTENSIONS:
            from safetensors import safe_open

            try:
                with safe_open(str(path), framework="pt") as handle:
                    for key in handle.keys():  # noqa: SIM118 (safe_open has no __iter__)
                        shapes[key] = tuple(handle.get_slice(key).get_shape())
            except Exception as err:
                raise WeightsError(f"step {step}: cannot read the header of {str(path)!r} ({err})",
                                   path=path, step=step) from err
        else:
            shapes.update({k: tuple(v.shape) for k, v in load_state_dict([path], step=step).items()})
    return shapes


def file_sha256(path: str | Path, chunk_bytes: int = 1 << 22) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk_bytes):
            digest.update(block)
    return digest.hexdigest()


def _load_safetensors(path: Path, step: int | None) -> StateDict:
    from safetensors import SafetensorError
    from safetensors.torch import load, load_file

    try:
        if not _utf8(path):
            return load(path.read_bytes())  # safetensors cannot open a non-UTF-8 name
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as err:
        raise WeightsError(
            f"step {step}: cannot read {str(path)!r} as safetensors ({err}); "
            "the file is truncated or not a safetensors file",
            path=path, step=step, hint="Re-download or re-save this checkpoint.",
        ) from err


def _utf8(path: Path) -> bool:
    try:
        str(path).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _load_pickle(path: Path, trust_pickle: bool, step: int | None) -> StateDict:
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if not trust_pickle:
            raise UnsafeCheckpointError(
                f"step {step}: {str(path)!r} cannot be loaded with weights_only=True: it holds "
                f"Python objects that full unpickling would execute ({_unpickler_reason(err)})",
                path=path, step=step,
                hint="Only if you trust who made this file, rerun with --trust-pickle; "
                "better, convert it to safetensors.",
            ) from err
        obj = _load_trusted_pickle(path, step)
    except (RuntimeError, EOFError, OSError, ValueError) as err:
        raise WeightsError(
            f"step {step}: cannot read {str(path)!r} as a torch checkpoint ({err})",
            path=path, step=step,
        ) from err
    return _find_state_dict(obj, path, step)


def _unpickler_reason(err: Exception) -> str:
    """The line of torch's weights_only error that names the refused global, without ANSI codes."""
    lines = [re.sub(r"\x1b\[[0-9;]*m", "", line).strip() for line in str(err).splitlines()]
    lines = [line for line in lines if line]
    for line in lines:
        if "WeightsUnpickler error" in line:
            return line.split(" Please use", 1)[0]
    return lines[0] if lines else type(err).__name__


def _load_trusted_pickle(path: Path, step: int | None) -> object:
    try:
        return torch.load(str(path), map_location="cpu", weights_only=False)
    except Exception as err:  # arbitrary code ran; report whatever it raised
        raise WeightsError(
            f"step {step}: unpickling {str(path)!r} failed ({err})", path=path, step=step
        ) from err


def _find_state_dict(obj: object, path: Path, step: int | None) -> StateDict:
    """Find the tensor mapping, also when nested under ``model``/``state_dict``/... keys."""
    if isinstance(obj, torch.nn.Module):
        return dict(obj.state_dict())
    if isinstance(obj, Mapping):
        tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
        if tensors and len(tensors) >= len(obj) / 2:
            return _strip_prefix(tensors)
        for key in NESTED_STATE_DICT_KEYS:
            if key in obj:
                return _find_state_dict(obj[key], path, step)
        keys = list(obj)[:10]
        raise WeightsError(
            f"step {step}: {str(path)!r} holds a dict without tensors; looked for nested keys "
            f"{list(NESTED_STATE_DICT_KEYS)} and found keys {keys}",
            path=path, step=step,
        )
    raise WeightsError(
        f"step {step}: {str(path)!r} holds a {type(obj).__name__}, expected a state dict",
        path=path, step=step,
    )


def _strip_prefix(state: StateDict, prefix: str = "module.") -> StateDict:
    """Drop the ``module.`` prefix that DataParallel/DDP add to every key."""
    if state and all(k.startswith(prefix) for k in state):
        return {k[len(prefix) :]: v for k, v in state.items()}
    return state


def fit_key_prefix(state: StateDict, model_keys: Collection[str]) -> StateDict:
    """``state`` without the leading ``name.`` all its keys share, when that makes it fit.

    A PyTorch Lightning checkpoint holds the ``LightningModule``'s state dict, whose keys
    carry the attribute that holds the network (``model.layers.0.weight``); the network
    rebuilt for the audit has ``layers.0.weight``. Nothing changes when any key already
    fits the model, or when the keys do not share one first component.
    """
    keys = set(model_keys)
    if not state or not keys or any(k in keys for k in state):
        return state
    heads = {k.split(".", 1)[0] for k in state}
    if len(heads) != 1 or not all("." in k for k in state):
        return state
    cut = len(heads.pop()) + 1
    stripped = {k[cut:]: v for k, v in state.items()}
    return stripped if any(k in keys for k in stripped) else state


def _upcast(tensor: torch.Tensor) -> torch.Tensor:
    if tensor.is_floating_point() and tensor.dtype in (torch.float16, torch.bfloat16):
        return tensor.float()
    return tensor
