"""Parse steps out of checkpoint names and select steps with the ``--steps`` grammar.

Grammar of ``--steps``::

    all              every step
    first | last     the first or the last step
    100,200,500      an explicit list (each must exist)
    a:b[:c]          steps s with a <= s < b, every c-th of those (a or b may be empty)
    log:N            about N steps spaced evenly in log(step+1), always first and last
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

from flq_audit.errors import StepSelectionError, StepSyntaxError

_INT = re.compile(r"\d+")
# Keywords that name the number next to them, strongest first.
_KEYWORDS = ("step", "iter", "iteration", "it", "global_step", "checkpoint", "ckpt", "epoch", "model")
_INIT_WORDS = frozenset({"init", "initial"})
_FINAL_WORDS = frozenset({"final", "last", "latest"})
_KEYED = re.compile(r"(?P<key>[a-z_]+?)[-_=]?(?P<num>\d+)", re.IGNORECASE)


def parse_step(name: str) -> int | None:
    """Return the step a checkpoint name encodes, or ``None`` when it encodes none.

    A name with one integer gives that integer. With several, the integer that follows the
    strongest keyword (``step`` > ``iter`` > ``checkpoint``/``ckpt`` > ``epoch`` > ``model``)
    wins; if no keyword decides, :class:`StepSelectionError` says the name is ambiguous.

    Examples
    --------
    >>> [parse_step(n) for n in ["step_100", "epoch_3", "100", "model_1000", "ckpt-00050"]]
    [100, 3, 100, 1000, 50]
    >>> parse_step("epoch_2_step_300")
    300
    >>> parse_step("epoch=3-step=1200")  # PyTorch Lightning
    1200
    >>> parse_step("final") is None
    True
    """
    numbers = _INT.findall(name)
    if not numbers:
        return None
    if len(numbers) == 1:
        return int(numbers[0])
    ranked: list[tuple[int, int]] = []
    for match in _KEYED.finditer(name):
        key = match.group("key").lower().rstrip("_-")
        key = key.split("_")[-1] if key not in _KEYWORDS else key
        if key in _KEYWORDS:
            ranked.append((_KEYWORDS.index(key), int(match.group("num"))))
    if ranked:
        ranked.sort()
        if len(ranked) == 1 or ranked[0][0] != ranked[1][0]:
            return ranked[0][1]
    raise StepSelectionError(
        f"cannot tell which number in {name!r} is the step: it holds {numbers}",
        hint="Rename the checkpoints so that the step follows 'step', 'epoch' or 'ckpt'.",
    )


def compile_name_pattern(pattern: str) -> re.Pattern[str]:
    """Compile a ``--name-pattern``; it must have a named group ``step``."""
    try:
        compiled = re.compile(pattern)
    except re.error as err:
        raise StepSyntaxError(
            f"--name-pattern {pattern!r} is not a valid regular expression: {err}") from None
    if "step" not in compiled.groupindex:
        raise StepSyntaxError(
            f"--name-pattern {pattern!r} has no named group 'step'",
            hint=r"Write the step as (?P<step>\d+), e.g. 'run-(?P<step>\d+)\.pt'.",
        )
    return compiled


def name_role(stem: str) -> str | None:
    """``init`` or ``final`` for a name without digits that says so, else ``None``."""
    if any(c.isdigit() for c in stem):
        return None
    words = set(re.split(r"[^a-z]+", stem.lower())) - {""}
    if words & _INIT_WORDS and not words & _FINAL_WORDS:
        return "init"
    if words & _FINAL_WORDS and not words & _INIT_WORDS:
        return "final"
    return None


def select_steps(available: Sequence[int], spec: str) -> list[int]:
    """Apply a ``--steps`` expression to the sorted available steps.

    Examples
    --------
    >>> steps = [0, 1, 2, 4, 8, 16, 32, 64, 128]
    >>> select_steps(steps, "first"), select_steps(steps, "last")
    ([0], [128])
    >>> select_steps(steps, "2:32")
    [2, 4, 8, 16]
    >>> select_steps(steps, "::3")
    [0, 4, 32]
    >>> select_steps(steps, "log:4")
    [0, 4, 32, 128]
    """
    steps = sorted(set(int(s) for s in available))
    if not steps:
        raise StepSelectionError("no checkpoints to select from")
    text = spec.strip().lower()
    if text in ("all", ""):
        return steps
    if text == "first":
        return steps[:1]
    if text == "last":
        return steps[-1:]
    if text.startswith("log:"):
        return _log_spaced(steps, _positive_int(text[4:], spec))
    if ":" in text:
        return _slice(steps, text, spec)
    wanted = [_int(part, spec) for part in text.split(",") if part.strip()]
    missing = [s for s in wanted if s not in steps]
    if missing:
        raise StepSelectionError(
            f"--steps {spec!r}: step(s) {missing} not found; available steps: {_preview(steps)}",
        )
    return sorted(set(wanted))


def _log_spaced(steps: list[int], count: int) -> list[int]:
    """About ``count`` steps evenly spaced in log(step + s0), s0 the smallest positive step."""
    if count >= len(steps):
        return steps
    if count == 1:
        return steps[-1:]
    offset = min((s for s in steps if s > 0), default=1)
    def position(step: int) -> float:
        return math.log(step - steps[0] + offset)

    lo, hi = position(steps[0]), position(steps[-1])
    chosen = [steps[0], steps[-1]]
    for k in range(1, count - 1):
        target = lo + (hi - lo) * k / (count - 1)
        free = [s for s in steps if s not in chosen]
        chosen.append(min(free, key=lambda s: (abs(position(s) - target), s)))
    return sorted(chosen)


def _slice(steps: list[int], text: str, spec: str) -> list[int]:
    parts = text.split(":")
    if len(parts) > 3:
        raise StepSyntaxError(f"--steps {spec!r}: expected start:stop[:stride]")
    start = _int(parts[0], spec) if parts[0] else None
    stop = _int(parts[1], spec) if parts[1] else None
    stride = _positive_int(parts[2], spec) if len(parts) == 3 and parts[2] else 1
    inside = [s for s in steps if (start is None or s >= start) and (stop is None or s < stop)]
    picked = inside[::stride]
    if not picked:
        raise StepSelectionError(
            f"--steps {spec!r} selects no step; available steps: {_preview(steps)}"
        )
    return picked


def _int(text: str, spec: str) -> int:
    try:
        return int(text.strip())
    except ValueError:
        raise StepSyntaxError(
            f"--steps {spec!r}: {text.strip()!r} is not an integer",
            hint="Use all, first, last, a list like 100,200, a range a:b[:c], or log:N.",
        ) from None


def _positive_int(text: str, spec: str) -> int:
    value = _int(text, spec)
    if value < 1:
        raise StepSyntaxError(f"--steps {spec!r}: expected a positive integer, got {value}")
    return value


def _preview(steps: Sequence[int], limit: int = 12) -> str:
    if len(steps) <= limit:
        return ", ".join(map(str, steps))
    head = ", ".join(map(str, steps[: limit // 2]))
    tail = ", ".join(map(str, steps[-limit // 2 :]))
    return f"{head}, ..., {tail} ({len(steps)} in all)"
