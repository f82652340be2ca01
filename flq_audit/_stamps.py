"""Stamps: a metric group is current only when its stamp, written after its arrays, matches.

The stamps live in the store's root attribute ``flq_metrics``: one entry per stored
parameter set (``tag``: the group plus its name suffix), holding the group, its parameters
and their id, the done steps it was computed from and its variables. A group whose
variables exist without a matching stamp was interrupted while being written.

This module reads and writes attributes only (no dask, no metric registry), so that ``show``
can tell complete, stale and incomplete groups apart without the metrics engine.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import xarray as xr

STAMPS_ATTR = "flq_metrics"
GROUP_ATTR = "flq_group"
TAG_ATTR = "flq_metric"
PARAMS_ATTR = "flq_params"
OUTPUT_ATTR = "flq_output"
PARAM_ID_ATTR = "flq_param_id"
LEGACY_STAMP_ATTR = "flq_stamp"


def stamps(attrs: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The stamps recorded in a store's root attributes (a JSON string or a mapping)."""
    raw = attrs.get(STAMPS_ATTR)
    if raw is None:
        return {}
    data = json.loads(raw) if isinstance(raw, str) else raw
    return {str(k): dict(v) for k, v in dict(data).items()}


def done_steps(ds: xr.Dataset) -> list[int]:
    return [int(s) for s in ds["step"].values[ds["done"].values.astype(bool)]]


def variables_by_tag(ds: xr.Dataset) -> dict[str, list[str]]:
    """Metric variables written by the metrics engine (or by 0.1), grouped by tag."""
    tags: dict[str, list[str]] = {}
    for name, var in ds.data_vars.items():
        if GROUP_ATTR in var.attrs or LEGACY_STAMP_ATTR in var.attrs:
            tags.setdefault(str(var.attrs.get(TAG_ATTR)), []).append(str(name))
    return tags


def group_of(tag: str, attrs: Mapping[str, Any]) -> str:
    return str(attrs.get(GROUP_ATTR) or tag.partition("__")[0])


def is_complete(ds: xr.Dataset, tag: str) -> bool:
    """Has every variable of ``tag`` been written and then stamped?"""
    stamp = stamps(ds.attrs).get(tag)
    names = variables_by_tag(ds).get(tag, [])
    if stamp is not None:
        return all(v in ds.data_vars for v in stamp.get("variables", [])) and bool(names)
    if STAMPS_ATTR in ds.attrs:
        return False
    # a store written by 0.1 (no stamps yet): each variable carried its own stamp
    return bool(names) and all(LEGACY_STAMP_ATTR in ds[v].attrs for v in names)


def incomplete_groups(ds: xr.Dataset) -> list[str]:
    """Tags whose variables are in the store without a stamp (an interrupted write)."""
    return sorted(tag for tag in variables_by_tag(ds) if not is_complete(ds, tag))


def is_current(ds: xr.Dataset, tag: str, param_id: str) -> bool:
    """Complete, computed from the store's done steps, with these parameters."""
    stamp = stamps(ds.attrs).get(tag)
    return (stamp is not None and is_complete(ds, tag) and stamp.get("param_id") == param_id
            and stamp.get("done_steps") == done_steps(ds))


def make_stamp(ds: xr.Dataset, group: str, params: Mapping[str, Any], param_id: str,
               variables: list[str]) -> dict[str, Any]:
    return {"group": group, "params": dict(params), "param_id": param_id,
            "done_steps": done_steps(ds), "variables": sorted(variables)}


def with_stamps(attrs: Mapping[str, Any], entries: Mapping[str, dict[str, Any] | None]
                ) -> dict[str, Any]:
    """Root attributes with the given stamps set (or removed, for ``None``)."""
    current = stamps(attrs)
    for tag, entry in entries.items():
        if entry is None:
            current.pop(tag, None)
        else:
            current[tag] = entry
    return {**attrs, STAMPS_ATTR: json.dumps(current, sort_keys=True)}


def stale_steps(ds: xr.Dataset, tag: str) -> list[int] | None:
    """The done steps a stamped group was computed on, when they are not the store's done
    steps now (the group is stale); ``None`` when it is current (or carries no steps)."""
    stamp = stamps(ds.attrs).get(tag)
    if stamp is None or stamp.get("done_steps") is None:
        return None
    computed_on = [int(s) for s in stamp["done_steps"]]
    return None if computed_on == done_steps(ds) else computed_on


def stale_groups(ds: xr.Dataset) -> dict[str, tuple[int, int]]:
    """Stale stamped groups (by tag): the number of steps each was computed on and the
    number of the store's done steps now."""
    now = len(done_steps(ds))
    out: dict[str, tuple[int, int]] = {}
    for tag in variables_by_tag(ds):
        computed_on = stale_steps(ds, tag) if is_complete(ds, tag) else None
        if computed_on is not None:
            out[tag] = (len(computed_on), now)
    return dict(sorted(out.items()))


def metric_status(ds: xr.Dataset) -> dict[str, str]:
    """Each persisted metric variable's state: ``"current"`` (stamped, from the store's
    done steps), ``"stale"`` (stamped from other done steps: recomputed on the next run) or
    ``"incomplete"`` (written without a stamp: its write was interrupted)."""
    status: dict[str, str] = {}
    for tag, names in variables_by_tag(ds).items():
        stamp = stamps(ds.attrs).get(tag)
        if not is_complete(ds, tag):
            state = "incomplete"
        elif stamp is not None and stamp.get("done_steps") not in (None, done_steps(ds)):
            state = "stale"
        else:
            state = "current"
        status.update(dict.fromkeys(names, state))
    return {name: status[name] for name in ds.data_vars if name in status}


def stored_name(name: str, suffix: str) -> str:
    """``target_linearity_rank`` → ``target_linearity__pca256_rank``; ``t90`` → ``t90__pca256``."""
    if not suffix:
        return name
    if name.startswith("target_linearity"):
        return name.replace("target_linearity", "target_linearity" + suffix, 1)
    return name + suffix


def stored_parameters(attrs: Mapping[str, Any], options: type | None) -> dict[str, Any]:
    """A variable's parameters, from ``flq_params`` or (0.1 stores) its plain attributes."""
    if PARAMS_ATTR in attrs:
        return dict(json.loads(attrs[PARAMS_ATTR]))
    from_attrs = getattr(options, "from_attrs", None)
    return dict(from_attrs(attrs).to_attrs()) if callable(from_attrs) else {}


def find_metric(ds: xr.Dataset, name: str, params: Mapping[str, Any],
                options: Mapping[str, type | None]) -> list[str]:
    """Variables holding output ``name`` computed with ``params`` (the group's defaults fill
    what is not given), selected by attributes alone. ``options`` maps group → options type."""
    from flq_audit.metrics._options import options_attrs, options_suffix

    found: list[str] = []
    for var_name, var in ds.data_vars.items():
        attrs = var.attrs
        if GROUP_ATTR not in attrs and LEGACY_STAMP_ATTR not in attrs:
            continue
        group = group_of(str(attrs.get(TAG_ATTR, "")), attrs)
        kind = options.get(group)
        wanted = options_attrs(kind(**params)) if kind is not None else dict(params)
        stored = stored_parameters(attrs, kind)
        if OUTPUT_ATTR in attrs:
            same_output = attrs[OUTPUT_ATTR] == name
        else:  # 0.1: the name that version gave this output for these parameters
            suffix = options_suffix(kind.from_attrs(attrs)) if kind is not None else ""  # type: ignore[attr-defined]  # kinds with parameters have from_attrs
            same_output = var_name == stored_name(name, suffix)
        if same_output and stored.keys() == wanted.keys() and all(
                _same(stored[key], value) for key, value in wanted.items()):
            found.append(str(var_name))
    return found


def _same(a: object, b: object) -> bool:
    if isinstance(a, int | float | np.number) and isinstance(b, int | float | np.number):
        return float(a) == float(b)
    return a == b


__all__ = [
    "STAMPS_ATTR",
    "find_metric",
    "incomplete_groups",
    "is_complete",
    "is_current",
    "make_stamp",
    "metric_status",
    "stale_groups",
    "stale_steps",
    "stamps",
    "stored_name",
    "with_stamps",
]
