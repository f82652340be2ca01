"""Parse checkpoint coordinates out of Hub revision (branch) names.

Pure functions, no I/O. Built-in families, tried in this order (names are matched whole,
case-insensitively)::

    olmo2     stage1-step140000-tokens294B, stage2-ingredient3-step11931-tokens100B
    olmo      step1000-tokens4B                      (OLMo 1 "-hf" repos; tokens2B in 0724)
    pythia    step0, step512, step143000             (EleutherAI Pythia)
    step_n    step_200                               (OLMo 3 Think/RL and others)
    amber     ckpt_000 … ckpt_358                    (LLM360 Amber)
    crystal   CrystalCoder_phase2_checkpoint_011000  (LLM360 Crystal: phase = stage)
    crfm      checkpoint-400000                      (Stanford CRFM GPT-2 runs)

A custom ``--revision-pattern`` replaces the built-ins: a regular expression matched against
the whole name, with a named group ``step`` and optional groups ``stage``, ``ingredient``,
``tokens`` (digits) and ``unit`` (K, M, B or T after the tokens).

The step axis
-------------
Some families restart the step counter: OLMo 2 per stage (and per mid-training
"ingredient" run), Crystal per phase. Every checkpoint still needs one unique integer
``step``, so :func:`assign_steps` lays the *tracks* — the distinct ``(stage, ingredient)``
pairs, sorted — end to end: the first track keeps its own steps, each later track is shifted
by the previous track's offset plus its largest step plus one. The result is monotone in
training order, unique, and equal to the name's step whenever there is a single track
(Pythia, OLMo 1, a pattern that selects one stage). The raw step, stage, ingredient and
tokens stay available (the Hub source keeps them in ``CheckpointRef.extra``). Because the
offsets depend on which revisions exist, the axis of a multi-track repo changes if branches
are added to it later; the pinned commit and raw coordinates remain authoritative.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from flq_audit.errors import StepSelectionError, StepSyntaxError

_UNITS = {"": 1, "K": 10**3, "M": 10**6, "B": 10**9, "T": 10**12}
_TOKENS = r"tokens(?P<tokens>\d+)(?P<unit>[KMBT]?)"

#: Built-in families, tried in order; each pattern must match the whole name.
FAMILIES: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (family, re.compile(pattern, re.IGNORECASE))
    for family, pattern in (
        ("olmo2", rf"stage(?P<stage>\d+)-(?:ingredient(?P<ingredient>\d+)-)?step(?P<step>\d+)-{_TOKENS}"),
        ("olmo", rf"step(?P<step>\d+)-{_TOKENS}"),
        ("pythia", r"step(?P<step>\d+)"),
        ("step_n", r"step_(?P<step>\d+)"),
        ("amber", r"ckpt_(?P<step>\d+)"),
        ("crystal", r"(?:[A-Za-z0-9]+_)?phase(?P<stage>\d+)_checkpoint_(?P<step>\d+)"),
        ("crfm", r"checkpoint-(?P<step>\d+)"),
    )
)


@dataclass(frozen=True)
class RevisionInfo:
    """Coordinates parsed from one revision name.

    ``step`` is the number written in the name (it may restart per stage); ``tokens`` is the
    number of training tokens the name states (``tokens4B`` → 4_000_000_000), else ``None``.
    """

    name: str
    family: str
    step: int
    stage: int | None = None
    ingredient: int | None = None
    tokens: int | None = None

    @property
    def track(self) -> tuple[int, int]:
        """The run segment this revision belongs to: ``(stage, ingredient)``, -1 for absent."""
        return (
            -1 if self.stage is None else self.stage,
            -1 if self.ingredient is None else self.ingredient,
        )

    def order_key(self) -> tuple[int, int, int]:
        """Training order: by stage, then ingredient, then the step within them."""
        return (*self.track, self.step)

    def extra(self) -> dict[str, str]:
        """The coordinates as strings, for ``CheckpointRef.extra``."""
        out = {"family": self.family, "raw_step": str(self.step)}
        for key in ("stage", "ingredient", "tokens"):
            value = getattr(self, key)
            if value is not None:
                out[key] = str(value)
        return out


def compile_revision_pattern(pattern: str | re.Pattern[str]) -> re.Pattern[str]:
    """Compile a ``--revision-pattern``; it must have a named group ``step``.

    >>> compile_revision_pattern(r"run-(?P<step>\\d+)").groupindex["step"]
    1
    """
    try:
        compiled = pattern if isinstance(pattern, re.Pattern) else re.compile(pattern)
    except re.error as err:
        raise StepSyntaxError(
            f"--revision-pattern {pattern!r} is not a valid regular expression: {err}",
        ) from None
    if "step" not in compiled.groupindex:
        raise StepSyntaxError(
            f"--revision-pattern {compiled.pattern!r} has no named group 'step'",
            hint=r"Write the step as (?P<step>\d+), e.g. 'iter-(?P<step>\d+)'; "
                 "optional groups: stage, ingredient, tokens.",
        )
    return compiled


def parse_revision(name: str, pattern: str | re.Pattern[str] | None = None) -> RevisionInfo | None:
    """Parse a revision name with ``pattern`` (if given) or the built-in families.

    Returns ``None`` when the name is not a checkpoint (``main``, ``v1.0``, a PR branch).

    >>> parse_revision("step1000")
    RevisionInfo(name='step1000', family='pythia', step=1000, stage=None, ingredient=None, tokens=None)
    >>> info = parse_revision("stage2-ingredient1-step2000-tokens9B")
    >>> info.family, info.stage, info.ingredient, info.step, info.tokens
    ('olmo2', 2, 1, 2000, 9000000000)
    >>> parse_revision("main") is None
    True
    """
    if pattern is not None:
        return _from_match(name, "custom", compile_revision_pattern(pattern).fullmatch(name))
    for family, regex in FAMILIES:
        info = _from_match(name, family, regex.fullmatch(name))
        if info is not None:
            return info
    return None


def assign_steps(infos: Sequence[RevisionInfo]) -> list[int]:
    """One unique, training-ordered integer step per revision (see the module docstring).

    >>> names = ["stage1-step0-tokens0B", "stage1-step900-tokens4B",
    ...          "stage2-ingredient1-step0-tokens4B", "stage2-ingredient1-step50-tokens5B"]
    >>> assign_steps([parse_revision(n) for n in names])
    [0, 900, 901, 951]
    >>> assign_steps([parse_revision(n) for n in ["step1000", "step0"]])
    [1000, 0]

    Raises :class:`StepSelectionError` when two names land on the same step.
    """
    tracks = sorted({info.track for info in infos})
    offsets: dict[tuple[int, int], int] = {}
    offset = 0
    for track in tracks:
        offsets[track] = offset
        offset += max(info.step for info in infos if info.track == track) + 1
    steps = [offsets[info.track] + info.step for info in infos]
    seen: dict[int, str] = {}
    for info, step in zip(infos, steps, strict=True):
        if step in seen:
            raise StepSelectionError(
                f"revisions {seen[step]!r} and {info.name!r} both give step {step}",
                step=step,
                hint="Pick one naming scheme with --revision-pattern, e.g. '^step(?P<step>\\d+)$'.",
            )
        seen[step] = info.name
    return steps


def _from_match(name: str, family: str, match: re.Match[str] | None) -> RevisionInfo | None:
    if match is None:
        return None
    groups = match.groupdict()

    def integer(key: str) -> int | None:
        value = groups.get(key)
        return int(value) if value else None

    tokens = integer("tokens")
    if tokens is not None:
        tokens *= _UNITS[(groups.get("unit") or "").upper()]
    step = integer("step")
    if step is None:
        return None
    return RevisionInfo(
        name=name, family=family, step=step, stage=integer("stage"),
        ingredient=integer("ingredient"), tokens=tokens,
    )


__all__ = ["FAMILIES", "RevisionInfo", "assign_steps", "compile_revision_pattern", "parse_revision"]
