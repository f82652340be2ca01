"""The metric stamps (kept in :mod:`flq_audit._stamps`, which ``show`` reads without
the metrics engine)."""

from __future__ import annotations

from flq_audit._stamps import (
    GROUP_ATTR,
    LEGACY_STAMP_ATTR,
    OUTPUT_ATTR,
    PARAM_ID_ATTR,
    PARAMS_ATTR,
    STAMPS_ATTR,
    TAG_ATTR,
    done_steps,
    find_metric,
    group_of,
    incomplete_groups,
    is_complete,
    is_current,
    make_stamp,
    metric_status,
    stale_groups,
    stale_steps,
    stamps,
    stored_name,
    stored_parameters,
    variables_by_tag,
    with_stamps,
)

__all__ = [
    "GROUP_ATTR", "LEGACY_STAMP_ATTR", "OUTPUT_ATTR", "PARAMS_ATTR", "PARAM_ID_ATTR",
    "STAMPS_ATTR", "TAG_ATTR", "done_steps", "find_metric", "group_of", "incomplete_groups",
    "is_complete", "is_current", "make_stamp", "metric_status", "stale_groups", "stale_steps",
    "stamps", "stored_name",
    "stored_parameters", "variables_by_tag", "with_stamps",
]
