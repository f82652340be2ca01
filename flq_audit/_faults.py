"""Named fault points: let tests interrupt a real process at an exact place, not after a sleep.

A fault is armed with the environment variable ``FLQ_AUDIT_FAULT``::

    FLQ_AUDIT_FAULT="kill@step-batch:step=10,batch=2"

``ACTION@POINT[:KEY=VALUE,...]``. When the code reaches ``fault_point("step-batch", step=10,
batch=2)`` and every given ``KEY=VALUE`` matches (compared as strings), the process sends
itself the signal named by ACTION: ``kill`` (SIGKILL: nothing runs after it), ``int``
(SIGINT, as Ctrl-C) or ``term`` (SIGTERM, as a cluster scheduler). Keys the fault does not
name match anything, so ``kill@step-commit`` fires at the first step's commit.

Points in the code (each is documented where it is called):

- ``store-create``: the store template is half written.
- ``store-grow`` (``stage``): the step axis is growing: its journal is written (``journal``),
  or an array is resized (``arrays``), the ``step`` coordinate not yet.
- ``step-batch`` (``step``, ``batch``): batch ``batch`` (0-based) of step ``step`` replayed.
- ``step-commit`` (``step``): all of a step's data landed, ``done(step)`` not yet written.
- ``metrics-write`` (``group``): metric values half written, the group's stamp not yet.
- ``metrics-stamp`` (``group``): a group's stamp is about to be written.
- ``export``: the NetCDF file is half written.

Unset (always, outside tests) it costs one dictionary lookup per call.
"""

from __future__ import annotations

import os
import signal

ENV_VAR = "FLQ_AUDIT_FAULT"

_SIGNALS = {"kill": signal.SIGKILL, "int": signal.SIGINT, "term": signal.SIGTERM}


def _parse(spec: str) -> tuple[str, str, dict[str, str]]:
    action, _, rest = spec.partition("@")
    point, _, params = rest.partition(":")
    where = dict(item.split("=", 1) for item in params.split(",") if "=" in item)
    return action.strip(), point.strip(), {k.strip(): v.strip() for k, v in where.items()}


def fault_point(point: str, **where: object) -> None:
    """Send this process the armed signal if ``FLQ_AUDIT_FAULT`` names this point."""
    spec = os.environ.get(ENV_VAR)
    if not spec:
        return
    action, armed, wanted = _parse(spec)
    if armed != point or action not in _SIGNALS:
        return
    if any(str(where.get(key)) != value for key, value in wanted.items()):
        return
    if action != "kill":
        os.environ.pop(ENV_VAR, None)  # fire once: the handler's own clean-up must not re-fire
    os.kill(os.getpid(), _SIGNALS[action])


__all__ = ["ENV_VAR", "fault_point"]
