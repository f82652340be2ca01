"""The rules of local workers: how many processes ``--workers auto`` runs, the torch threads
of each, how ``--workers`` is read, and the order in which steps are handed out."""

from __future__ import annotations

import pytest

from flq_audit.options import RunOptions
from flq_audit.scheduler import auto_workers, threads_per_worker
from flq_audit.sources import CheckpointRef


@pytest.mark.parametrize(("cores", "steps", "device", "expected"), [
    (1, 100, "cpu", 1),   # one core: nothing to share out
    (2, 0, "cpu", 1),     # nothing left to audit
    (2, 3, "cpu", 1),     # a worker would audit a single step
    (2, 4, "cpu", 2),     # two steps each
    (2, 100, "cpu", 2),   # never more processes than cores
    (4, 6, "cpu", 3),     # two steps each on three of the four cores
    (4, 7, "cpu", 3),
    (16, 154, "cpu", 16),
    (8, 100, "cuda", 1),  # one accelerator: its processes would share it
    (8, 100, "cuda:1", 1),
    (8, 100, "mps", 1),
])
def test_auto_picks_sequential_unless_each_process_gets_two_steps_on_its_own_core(
        cores, steps, device, expected):
    assert auto_workers(cores, steps, device) == expected


@pytest.mark.parametrize(("cores", "workers", "threads", "expected"), [
    (2, 2, None, 1),    # two single-threaded processes on two cores
    (16, 4, None, 4),
    (3, 2, None, 1),    # rounded down: never more threads than cores
    (1, 2, None, 1),    # at least one
    (16, 4, 2, 2),      # --threads wins
    (2, 2, 8, 8),
])
def test_threads_times_workers_never_exceed_the_cores_unless_asked(cores, workers, threads,
                                                                    expected):
    assert threads_per_worker(cores, workers, threads) == expected
    if threads is None and cores >= workers:
        assert threads_per_worker(cores, workers) * workers <= cores


@pytest.mark.parametrize(("given", "expected"), [
    ("auto", "auto"), (" AUTO ", "auto"), ("3", 3), (2, 2), (None, None),
])
def test_workers_is_read_as_a_count_or_auto(given, expected):
    assert RunOptions(workers=given).workers == expected


def _ref(step: int) -> CheckpointRef:
    return CheckpointRef(step=step, label=f"step_{step}", location=f"/run/step_{step}",
                         files=(f"step_{step}.safetensors",), fmt="safetensors")


def test_steps_are_handed_out_in_order_and_a_duplicate_after_its_original():
    from flq_audit.audit._lanes import StepQueue

    steps = StepQueue([_ref(s) for s in (0, 10, 20, 30)], {20: 10})
    assert [steps.take().step, steps.take().step] == [0, 10]  # type: ignore[union-attr]
    assert steps.take().step == 30  # type: ignore[union-attr]
    assert steps.take() is None  # 20 copies 10: not before 10's outcome is known
    steps.settle(0)
    assert steps.take() is None
    steps.settle(10)
    assert steps.take().step == 20  # type: ignore[union-attr]
    assert steps.take() is None
    steps.close()
    assert steps.take() is None
