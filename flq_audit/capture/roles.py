"""``--layers`` by role for language models: ``mlp.down``, ``attn.out@0,8,15``, ``unembed``.

A *role* names one kind of matrix in every block of a transformer (``mlp.down`` is GPT-NeoX's
``dense_4h_to_h``, GPT-2's ``mlp.c_proj`` and Llama's ``down_proj``); ``@`` picks blocks, by
index (``@0,8,15``, negative indices count from the end) or by a Python slice (``@0:24:4``).
The model family comes from the transformers config's ``model_type``, else from the layer
names themselves. Other ``--layers`` values (names and globs) pass through unchanged.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from flq_audit.errors import LayerNotFoundError, OptionError

#: Every role, in the order a block reads them.
ROLES = ("embed", "attn.qkv", "attn.q", "attn.k", "attn.v", "attn.out", "mlp.gate", "mlp.up",
         "mlp.down", "unembed")
_GLOBAL = ("embed", "unembed")  # one matrix per model, not one per block
_ROLE_PREFIXES = ("attn.", "mlp.")
_INDEX = re.compile(r"-?\d+")
_SLICE = re.compile(r"(-?\d*):(-?\d*)(?::(-?\d*))?")


@dataclass(frozen=True)
class Family:
    """The module names of each role in one model family (dotted suffixes of the name)."""

    name: str
    model_types: tuple[str, ...]
    block: str  # regex of a block's prefix, one group: the block index
    roles: Mapping[str, tuple[str, ...]]

    def pattern(self, role: str) -> re.Pattern[str]:
        """The regex that the full names of ``role``'s layers match (group 1: the block)."""
        tails = "|".join(re.escape(t) for t in self.roles[role])
        if role in _GLOBAL:
            return re.compile(rf"(?:^|.*\.)(?:{tails})$")
        return re.compile(rf"(?:^|.*\.){self.block}\.(?:{tails})$")

    def role_of(self, name: str) -> str | None:
        """The narrowest role of the layer called ``name`` (``attn.q`` rather than
        ``attn.qkv`` for a split projection; ``None``: none of this family's roles)."""
        found = [r for r in self.roles if self.pattern(r).match(name)]
        return min(found, key=lambda r: len(self.roles[r])) if found else None


_LLAMA_ATTN = {"attn.qkv": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
               "attn.q": ("self_attn.q_proj",), "attn.k": ("self_attn.k_proj",),
               "attn.v": ("self_attn.v_proj",)}

FAMILIES = (
    Family("gpt_neox", ("gpt_neox",), r"layers\.(\d+)", {
        "embed": ("embed_in",), "attn.qkv": ("attention.query_key_value",),
        "attn.out": ("attention.dense",), "mlp.up": ("mlp.dense_h_to_4h",),
        "mlp.down": ("mlp.dense_4h_to_h",), "unembed": ("embed_out", "lm_head")}),
    Family("gpt2", ("gpt2", "gpt_bigcode"), r"h\.(\d+)", {
        "embed": ("wte",), "attn.qkv": ("attn.c_attn",), "attn.out": ("attn.c_proj",),
        "mlp.up": ("mlp.c_fc",), "mlp.down": ("mlp.c_proj",), "unembed": ("lm_head",)}),
    Family("llama", ("llama", "mistral", "olmo", "olmo2", "qwen2", "qwen3", "gemma", "gemma2",
                     "granite"), r"layers\.(\d+)", {
        "embed": ("embed_tokens",), **_LLAMA_ATTN, "attn.out": ("self_attn.o_proj",),
        "mlp.gate": ("mlp.gate_proj",), "mlp.up": ("mlp.up_proj",),
        "mlp.down": ("mlp.down_proj",), "unembed": ("lm_head",)}),
    Family("opt", ("opt",), r"layers\.(\d+)", {
        "embed": ("embed_tokens",),
        **_LLAMA_ATTN,
        "attn.out": ("self_attn.out_proj",), "mlp.up": ("fc1",), "mlp.down": ("fc2",),
        "unembed": ("lm_head",)}),
)


def family_names() -> str:
    """``gpt_neox (gpt_neox), gpt2 (gpt2, gpt_bigcode), …``: the families and their model types."""
    return ", ".join(f"{f.name} ({', '.join(f.model_types)})" for f in FAMILIES)


def model_type_of(module: Any) -> str | None:
    """The transformers ``model_type`` of a module's config (``None``: no config)."""
    model_type = getattr(getattr(module, "config", None), "model_type", None)
    return model_type if isinstance(model_type, str) else None


def family_for(model_type: str | None, names: Iterable[str]) -> Family | None:
    """The family of ``model_type``, else the one whose block roles name most of ``names``."""
    for family in FAMILIES:
        if model_type in family.model_types:
            return family
    names = list(names)
    scores = [(sum(1 for n in names if (r := f.role_of(n)) and r not in _GLOBAL), f)
              for f in FAMILIES]
    best, family = max(scores, key=lambda sf: sf[0])
    return family if best else None


def roles_of(names: Sequence[str], model_type: str | None) -> list[str | None]:
    """Each layer's role (``None`` where it has none, or the family is unknown)."""
    family = family_for(model_type, names)
    if family is None:  # a lone unembedding (or embedding) needs no family to be named
        return [_shared_role(n) for n in names]
    return [family.role_of(n) for n in names]


def layer_roles(plan: Any) -> list[str | None]:
    """The role of each of an audit plan's layers (``plan.layers``, ``plan.built``)."""
    module = None if plan.built is None else plan.built.module
    return roles_of([li.name for li in plan.layers], model_type_of(module))


def _shared_role(name: str) -> str | None:
    """The role every family gives ``name``, when they all agree on a global role."""
    found = {f.role_of(name) for f in FAMILIES} - {None}
    return found.pop() if len(found) == 1 and found <= set(_GLOBAL) else None


def split_layers(values: Iterable[str]) -> list[str]:
    """``--layers`` values split at commas, keeping a block list with its role
    (``attn.out@0,8,15,unembed`` is ``['attn.out@0,8,15', 'unembed']``)."""
    out: list[str] = []
    for value in values:
        for part in (p.strip() for p in value.split(",")):
            if not part:
                continue
            if out and "@" in out[-1] and _INDEX.fullmatch(part):
                out[-1] += f",{part}"
            else:
                out.append(part)
    return out


@dataclass(frozen=True)
class _Selector:
    text: str
    role: str
    blocks: str | None  # what follows "@"


def _selector(token: str, names: Sequence[str], family: Family | None) -> _Selector | None:
    """``token`` as a role selector; ``None`` when it is a plain name or glob."""
    role, at, blocks = token.partition("@")
    if not at:
        if role in ROLES:
            if family is None and any(fnmatch.fnmatchcase(n, token) for n in names):
                return None  # a layer of a non-LM model that happens to share a role's name
            return _Selector(token, role, None)
        if family is None or not role.startswith(_ROLE_PREFIXES):
            return None
        if any(fnmatch.fnmatchcase(n, token) for n in names):
            return None
    return _Selector(token, role, blocks if at else None)


def resolve_roles(
    patterns: Sequence[str], names: Sequence[str], *, model_type: str | None,
    weights_only: bool = False,
) -> tuple[list[str], dict[str, str]]:
    """``patterns`` with each role selector replaced by the names it selects, and the role of
    each selected name. ``names`` are the model's candidate layers in model order.

    Raises :class:`LayerNotFoundError` for an unknown role, a role the family lacks, a block
    out of range, or a model of no known family; :class:`OptionError` for a malformed ``@``.
    """
    family = family_for(model_type, names)
    out: list[str] = []
    chosen: dict[str, str] = {}
    for token in patterns:
        selector = _selector(token, names, family)
        if selector is None:
            out.append(token)
            continue
        for name in _select(selector, names, family, model_type, weights_only=weights_only):
            chosen.setdefault(name, selector.role)
            out.append(name)
    return out, chosen


def _select(sel: _Selector, names: Sequence[str], family: Family | None,
            model_type: str | None, *, weights_only: bool) -> list[str]:
    """The names one role selector picks, in model order."""
    what = f"--layers {sel.text!r}"
    if family is None:
        raise LayerNotFoundError(
            f"{what}: {sel.role!r} is a layer role of a language model, and this model "
            f"(model_type {model_type!r}) is of no family with roles; families: "
            f"{family_names()}", layer=sel.text,
            hint="Name the layers instead (a name or a glob like 'layers.*').")
    described = f"model family {family.name}" + (
        f" (model_type {model_type!r})" if model_type and model_type != family.name else "")
    if sel.role not in family.roles:
        kind = "unknown role" if sel.role not in ROLES else f"no {sel.role} layers"
        raise LayerNotFoundError(
            f"{what}: {kind} in {described}; its roles: {', '.join(family.roles)}",
            layer=sel.text, hint=f"Every role (not all in every family): {', '.join(ROLES)}.")
    pattern = family.pattern(sel.role)
    hits = [n for n in names if pattern.match(n)]
    if not hits and sel.role == "unembed":  # tied to the embedding and not saved apart
        hits = [n for n in names if family.pattern("embed").match(n)]
    if not hits:
        raise LayerNotFoundError(
            f"{what}: {described} names its {sel.role} layers "
            f"{' or '.join(family.roles[sel.role])}, and this model has none", layer=sel.text)
    if sel.role == "embed" and not weights_only:
        raise LayerNotFoundError(
            f"{what}: the embedding ({hits[0]}) is a lookup table; the probe reaches it as "
            "token ids, so it has no input activations to capture", layer=sel.text,
            hint="Audit it with --weights-only (its Gram EᵀE), or pick another role.")
    if sel.blocks is None:
        return hits
    if sel.role in _GLOBAL:
        raise OptionError(f"{what}: {sel.role} is one matrix, not one per block; "
                          f"drop the '@{sel.blocks}'")
    n_blocks = 1 + max(int(m.group(1)) for n in names
                       if (m := re.match(rf"(?:^|.*\.){family.block}\.", n)))
    wanted = _blocks(sel, n_blocks, f"{family.name} model")
    by_block: dict[int, list[str]] = {}
    for name in hits:
        match = pattern.match(name)
        assert match is not None
        by_block.setdefault(int(match.group(1)), []).append(name)
    return [n for b in wanted for n in by_block.get(b, [])]


def _blocks(sel: _Selector, n_blocks: int, described: str) -> list[int]:
    """The block indices after ``@``: a comma list or a Python slice, within ``n_blocks``."""
    text = str(sel.blocks)
    what = f"--layers {sel.text!r}"
    if (sliced := _SLICE.fullmatch(text)) is not None:
        start, stop, step = (int(p) if p else None for p in sliced.groups())
        if step == 0:
            raise OptionError(f"{what}: a block slice's step must not be 0")
        wanted = list(range(n_blocks))[slice(start, stop, step)]
        if not wanted:
            raise LayerNotFoundError(f"{what}: the slice {text} selects no block of the "
                                     f"{n_blocks} in this {described}", layer=sel.text)
        return wanted
    parts = text.split(",")
    if not all(_INDEX.fullmatch(p.strip()) for p in parts):
        raise OptionError(f"{what}: expected block indices after '@', like @0,8,15, or a "
                          f"slice like @0:24:4; got {text!r}")
    indices = [int(p) for p in parts]
    bad = [i for i in indices if not -n_blocks <= i < n_blocks]
    if bad:
        raise LayerNotFoundError(
            f"{what}: block {bad[0]} is out of range; this {described} has {n_blocks} blocks "
            f"(0 to {n_blocks - 1})", layer=sel.text)
    return list(dict.fromkeys(i % n_blocks for i in indices))


__all__ = ["FAMILIES", "ROLES", "Family", "family_for", "layer_roles", "model_type_of",
           "resolve_roles", "roles_of", "split_layers"]
