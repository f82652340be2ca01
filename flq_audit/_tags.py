"""Run tags: ``--tag KEY=VALUE`` labels an audit's store (``weight_decay=0.5``, ``seed=1``).

Tags describe the run, not what was captured: they are not part of the store's fingerprint,
a later audit of the same store adds or changes them, and :func:`flq_audit.open_runs` makes
each one a coordinate along ``run`` (so ``ds.sel(run=ds.weight_decay == 0.5)`` works).
A value that reads as a JSON number or boolean is stored as one; anything else as text.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping

from flq_audit.errors import OptionError

TagValue = str | int | float | bool
#: The store attribute that holds the tags, a JSON object.
TAGS_ATTR = "tags"
#: Names a tag cannot take: the combined dataset's dimensions and its run coordinates.
RESERVED = frozenset({"run", "step", "layer", "sample", "feature", "target", "source",
                      "store", "probe_fingerprint", "flq_audit_version", "model", "commit"})


def parse_tag(text: str) -> tuple[str, TagValue]:
    """``"weight_decay=0.5"`` → ``("weight_decay", 0.5)``; ``"opt=adamw"`` → text."""
    key, sep, raw = text.partition("=")
    if not sep:
        raise OptionError(f"--tag {text!r}: expected KEY=VALUE, e.g. --tag weight_decay=0.5")
    try:
        value = json.loads(raw)
    except ValueError:
        value = raw
    if not isinstance(value, int | float | bool) or (isinstance(value, float) and not math.isfinite(value)):
        value = raw
    return check_tag(key.strip(), value)


def check_tag(key: str, value: object) -> tuple[str, TagValue]:
    """Refuse a key that cannot be a coordinate name or a value that is not a scalar."""
    if not key.isidentifier() or key.startswith("_"):
        raise OptionError(f"tag name {key!r} must be a Python identifier (letters, digits, "
                          "underscores; not starting with _ or a digit)")
    if key in RESERVED:
        raise OptionError(f"tag name {key!r} is reserved (a dimension or run coordinate of "
                          f"a comparison: {sorted(RESERVED)})")
    if not isinstance(value, str | int | float | bool):
        raise OptionError(f"tag {key!r}: the value must be text, a number or a boolean, "
                          f"got {type(value).__name__}")
    if isinstance(value, float) and not math.isfinite(value):
        raise OptionError(f"tag {key!r}: the value must be finite, got {value}")
    return key, value


def tag_pairs(tags: Mapping[str, object] | Iterable[str] | None) -> tuple[tuple[str, TagValue], ...]:
    """Checked ``(key, value)`` pairs from a mapping or ``KEY=VALUE`` strings, sorted by key."""
    if not tags:
        return ()
    pairs = (tags.items() if isinstance(tags, Mapping)
             else (parse_tag(t) for t in tags))
    checked = dict(check_tag(str(k), v) for k, v in pairs)
    return tuple(sorted(checked.items()))


def stored_tags(attrs: Mapping[str, object]) -> dict[str, TagValue]:
    """The tags of a store's root attributes (``{}`` when it has none or they are unreadable)."""
    try:
        tags = json.loads(str(attrs.get(TAGS_ATTR) or "{}"))
    except ValueError:
        return {}
    return tags if isinstance(tags, dict) else {}


def merged_tags(attrs: Mapping[str, object], pairs: Iterable[tuple[str, TagValue]]) -> str:
    """The store's tags with ``pairs`` added (a later value wins), as the attribute's JSON."""
    return json.dumps({**stored_tags(attrs), **dict(pairs)}, sort_keys=True)
