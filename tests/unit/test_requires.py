"""A missing browser, Hub server or tmpfs skips a test locally and fails it in CI."""

from __future__ import annotations

import pytest

from tests._helpers.requires import in_ci

pytest_plugins = ["pytester"]

#: The inner session loads no installed plugin (their imports are slow and not needed here).
INNER = ("--disable-plugin-autoload",)
NEEDS_A_TOOL = """
from tests._helpers.requires import missing, require_module

def test_needs_a_tool():
    missing("the frobnicator is not installed")

def test_needs_a_module():
    require_module("flq_no_such_module", "flq_no_such_module is not installed")

def test_has_its_module():
    assert require_module("json", "json is missing").dumps([]) == "[]"
"""


@pytest.mark.parametrize(("value", "ci"), [
    (None, False), ("", False), ("false", False), ("0", False), ("no", False),
    ("true", True), ("1", True), ("yes", True), ("TRUE", True), (" true ", True),
])
def test_ci_is_read_from_the_environment(monkeypatch, value, ci):
    if value is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", value)
    assert in_ci() is ci


def test_outside_ci_a_missing_piece_skips_with_its_reason(pytester, monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    pytester.makepyfile(NEEDS_A_TOOL)
    result = pytester.runpytest(*INNER, "-rs")
    result.assert_outcomes(passed=1, skipped=2)
    result.stdout.fnmatch_lines([
        "SKIPPED*the frobnicator is not installed*",
        "SKIPPED*flq_no_such_module is not installed*",
    ])


def test_in_ci_a_missing_piece_fails_with_its_reason(pytester, monkeypatch):
    monkeypatch.setenv("CI", "true")
    pytester.makepyfile(NEEDS_A_TOOL)
    result = pytester.runpytest(*INNER)
    result.assert_outcomes(passed=1, failed=2)
    result.stdout.fnmatch_lines([
        "*the frobnicator is not installed; CI=true needs it (unset CI to skip instead)*",
        "*flq_no_such_module is not installed; CI=true needs it*",
    ])
    assert "Traceback" not in result.stdout.str()
