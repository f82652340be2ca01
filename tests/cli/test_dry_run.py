"""``--dry-run`` next to an existing store says what the real run will do: the same check."""

from __future__ import annotations

import json

import pytest

from tests._helpers.cli import describe, invoke, run_many, squash
from tests._helpers.runs import make_run


@pytest.fixture(scope="module")
def probe_store(tmp_path_factory):
    """(run, store): a run folder and the store of a probe audit of it."""
    root = tmp_path_factory.mktemp("dry")
    run = make_run(root / "run")
    store = root / "S.zarr"
    result = invoke("audit", run, "--out", store)
    assert result.exit_code == 0, describe(result)
    return run, store


def _reason(stderr: str, prefix: str) -> str:
    """The message after ``prefix`` on stderr, whitespace dropped (Rich may wrap it)."""
    flat = squash(stderr)
    assert squash(prefix) in flat, stderr
    return flat.split(squash(prefix), 1)[1]


def test_weights_only_dry_run_on_a_probe_store_is_refused_like_the_real_run(probe_store):
    run, store = probe_store
    procs = run_many({
        "dry": (run, "--out", store, "--weights-only", "--dry-run"),
        "dry_json": (run, "--out", store, "--no-probe", "--dry-run", "--json"),
        "real": (run, "--out", store, "--weights-only"),
    })
    real, dry, dry_json = procs["real"], procs["dry"], procs["dry_json"]
    assert real.returncode == 4, describe(real)
    assert dry.returncode == real.returncode, describe(dry)
    assert dry_json.returncode == real.returncode, describe(dry_json)
    reason = _reason(real.stderr, "error:")
    assert "madebyadifferentaudit" in reason
    assert _reason(dry.stderr, "error: refused:") == reason
    assert "refused" in dry.stdout and "resume" not in dry.stdout
    plan = json.loads(dry_json.stdout)
    assert plan["store_status"] == "refused"
    assert plan["already_done"] == []
    assert plan["store_refusal"]["exit_code"] == 4
    assert squash(plan["store_refusal"]["message"]) == reason


def test_dry_run_says_resume_only_when_the_real_run_resumes(probe_store, tmp_path):
    run, store = probe_store
    same = invoke("audit", run, "--out", store, "--dry-run", "--json")
    assert same.exit_code == 0, describe(same)
    plan = json.loads(same.stdout)
    assert plan["store_status"] == "resume" and plan["store_refusal"] is None
    assert plan["already_done"] == [0, 10, 20]
    replaced = invoke("audit", run, "--out", store, "--weights-only", "--overwrite",
                      "--dry-run", "--json")
    assert replaced.exit_code == 0, describe(replaced)
    assert json.loads(replaced.stdout)["store_status"] == "replace"
    fresh = invoke("audit", run, "--out", tmp_path / "new.zarr", "--dry-run", "--json")
    assert json.loads(fresh.stdout)["store_status"] == "new"
    assert not (tmp_path / "new.zarr").exists()


def test_the_refusal_line_reads_as_one_sentence_with_the_differences(probe_store):
    run, store = probe_store
    dry = invoke("audit", run, "--out", store, "--weights-only", "--dry-run")
    line = next(text for text in dry.stdout.splitlines() if text.startswith("store"))
    assert ":;" not in line and "different audit: " in line, line
    # the first difference follows the colon, as it follows the line break in the error
    first_difference = dry.stderr.split("different audit:", 1)[1].split("\n")[1].strip()
    assert f"different audit: {first_difference}" in line, (line, dry.stderr)
