"""The fault-point switch fires only at the armed point, with matching context."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

SCRIPT = """
from flq_audit._faults import fault_point
for step in (0, 10, 20):
    for batch in range(3):
        print(step, batch, flush=True)
        fault_point("step-batch", step=step, batch=batch)
print("end", flush=True)
"""


def _run(spec: str | None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env.pop("FLQ_AUDIT_FAULT", None)
    if spec is not None:
        env["FLQ_AUDIT_FAULT"] = spec
    return subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True,
                          text=True, timeout=60, check=False)


def test_unarmed_runs_to_the_end():
    done = _run(None)
    assert done.returncode == 0 and done.stdout.splitlines()[-1] == "end"


@pytest.mark.parametrize(("action", "code"), [("kill", -9), ("term", -15)])
def test_fires_at_the_matching_point_only(action, code):
    done = _run(f"{action}@step-batch:step=10,batch=1")
    assert done.returncode == code
    assert done.stdout.splitlines()[-1] == "10 1"


def test_int_raises_keyboard_interrupt_in_the_main_thread():
    done = _run("int@step-batch:step=20")
    # an unhandled KeyboardInterrupt ends the interpreter by SIGINT itself
    assert done.returncode == -2 and "KeyboardInterrupt" in done.stderr
    assert done.stdout.splitlines()[-1] == "20 0"


def test_other_points_and_unknown_actions_do_not_fire():
    assert _run("kill@store-create").returncode == 0
    assert _run("explode@step-batch").returncode == 0
