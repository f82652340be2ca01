import pytest

from flq_audit.errors import StepSelectionError
from flq_audit.sources.steps import parse_step, select_steps


@pytest.mark.parametrize(
    ("name", "step"),
    [
        ("step_100", 100), ("epoch_3", 3), ("100", 100), ("model_1000", 1000),
        ("ckpt-00050", 50), ("checkpoint-500", 500), ("step1000", 1000),
        ("epoch_2_step_300", 300), ("global_step42", 42), ("model_1000_v2", 1000),
        ("final", None), ("model", None),
    ],
)
def test_parse_step_table(name, step):
    assert parse_step(name) == step


def test_parse_step_ambiguous_names_the_numbers():
    with pytest.raises(StepSelectionError, match=r"'run3_seed7'.*\['3', '7'\]"):
        parse_step("run3_seed7")


STEPS = [0, 1, 2, 4, 8, 16, 32, 64, 128]


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("all", STEPS), ("first", [0]), ("last", [128]), ("4,64", [4, 64]),
        ("2:32", [2, 4, 8, 16]), (":5", [0, 1, 2, 4]), ("16:", [16, 32, 64, 128]),
        ("::4", [0, 8, 128]), ("log:1", [128]), ("log:100", STEPS),
    ],
)
def test_select_steps(spec, expected):
    assert select_steps(STEPS, spec) == expected


def test_log_keeps_first_and_last_and_count():
    steps = list(range(0, 143001, 1000))
    chosen = select_steps(steps, "log:8")
    assert chosen[0] == 0 and chosen[-1] == 143000 and len(chosen) == 8
    assert chosen == sorted(chosen)


@pytest.mark.parametrize(
    ("spec", "match"),
    [("5", r"step\(s\) \[5\] not found"), ("a:b", "not an integer"), ("log:0", "positive"),
     ("200:300", "selects no step"), ("1:2:3:4", "start:stop")],
)
def test_bad_selection_messages(spec, match):
    with pytest.raises(StepSelectionError, match=match):
        select_steps(STEPS, spec)
