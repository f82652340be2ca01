"""The built-in metric groups, registered in dependency order."""

from __future__ import annotations

from flq_audit.metrics import _collapse, _dynamics, _gram, _surrogate, _target_linearity
from flq_audit.metrics._spec import register_metric

for _module in (_target_linearity, _surrogate, _gram, _dynamics, _collapse):
    register_metric(_module.SPEC)
