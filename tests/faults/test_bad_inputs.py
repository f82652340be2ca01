"""The bad-input catalogue: every case exits with its documented code and a one-line message,
prints no traceback, and leaves every file that existed before byte for byte as it was."""

from __future__ import annotations

import pytest

from tests._helpers.cli import describe, invoke, squash
from tests.faults._catalogue import CASES, Case, build_world
from tests.faults._tree import tree_hashes


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    world = build_world(tmp_path_factory.mktemp("catalogue"))
    done = invoke("audit", world["run"], "--out", world["store"], "-q")
    assert done.exit_code == 0, describe(done)
    return world


def _fill(text: str, world: dict, case: Case) -> str:
    paths = {name: str(path) for name, path in world.items()}
    return text.format(**paths, out=str(world["root"] / f"out-{case.id}.zarr"))


def test_the_catalogue_is_large_and_names_are_unique():
    assert len(CASES) >= 90
    assert len({case.id for case in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_bad_input(world, case):
    before = tree_hashes(world["root"])
    result = invoke(*(_fill(arg, world, case) for arg in case.args))
    assert result.exit_code == case.code, describe(result)
    plain = case.first.startswith(("Usage:", "warning:"))
    first = _fill(case.first, world, case) if plain else "error: " + _fill(case.first, world, case)
    assert squash(result.stderr).startswith(squash(first)), describe(result)
    assert "Traceback" not in result.stderr + result.stdout
    assert result.exception is None or isinstance(result.exception, SystemExit), describe(result)
    after = tree_hashes(world["root"])
    changed = sorted(path for path, digest in before.items() if after.get(path) != digest)
    assert changed == [], f"{case.id} changed or deleted {changed}"
