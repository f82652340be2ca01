"""``flq-audit ORG/NAME --steps all`` end to end against a Hub-compatible server on loopback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from tests._helpers.hf_models import LABELS, TEXTS, model_for, tokenizer
from tests._helpers.hub import OlahServer, build_git_repo, olah_cli
from tests._helpers.requires import missing

pytestmark = [pytest.mark.hub, pytest.mark.slow]
TOKEN = "hf_flqAuditSecretToken0123456789"


def _revision(family: str, seed: int) -> dict[str, bytes]:
    """The files ``save_pretrained`` writes for a tiny model and its tokenizer."""
    with tempfile.TemporaryDirectory() as tmp:
        tok = tokenizer()
        model_for(family, tok.vocab_size, seed=seed).save_pretrained(tmp)
        tok.save_pretrained(tmp)
        return {p.name: p.read_bytes() for p in Path(tmp).iterdir() if p.is_file()}


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    if olah_cli() is None:
        missing("olah is not installed (pip install -e '.[test]')")
    work = tmp_path_factory.mktemp("olah-audit")
    server = OlahServer(work)
    step10 = _revision("neox", 10)
    branches = {"main": step10, "step0": _revision("neox", 0), "step10": step10,
                "step20": _revision("neox", 20), "step30": _revision("neox", 20)}
    shas = build_git_repo(server.repo_path("EleutherAI/pythia-tiny"), branches)
    olmo = {"main": step10, "step0-tokens0B": branches["step0"],
            "step1000-tokens4B": branches["step10"]}
    shas |= {f"olmo:{k}": v for k, v in build_git_repo(server.repo_path("allenai/olmo-tiny"),
                                                        olmo).items()}
    trainer = {f"checkpoint-{s}/{name}": data for s, files in ((5, branches["step0"]),
                                                               (15, branches["step10"]))
               for name, data in files.items()}
    trainer["checkpoint-5/optimizer.pt"] = b"\0" * 64
    shas |= {f"trainer:{k}": v for k, v in build_git_repo(
        server.repo_path("org/trainer-tiny"), {"main": trainer}).items()}
    endpoint = server.start()
    probe = work / "probe.jsonl"
    probe.write_text("".join(json.dumps({"text": t, "label": lab}) + "\n"
                             for t, lab in zip(TEXTS, LABELS, strict=True)))
    try:
        yield endpoint, shas, probe
    finally:
        server.stop()


def _cli(args: list, endpoint: str, home: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_ENDPOINT": endpoint, "HF_HOME": str(home),
           "HF_HUB_CACHE": str(home / "hub"), "HF_TOKEN": TOKEN, "NO_COLOR": "1"}
    return subprocess.run([sys.executable, "-m", "flq_audit", *map(str, args)], env=env,
                          capture_output=True, text=True, timeout=300)


def test_hub_repo_audit_pins_commits_flags_duplicates_and_drops_the_cache(hub, tmp_path):
    endpoint, shas, probe = hub
    home, store = tmp_path / "home", tmp_path / "s.zarr"
    dry = _cli(["EleutherAI/pythia-tiny", "--probe", probe, "--pooling", "mean", "--out", store,
                "--dry-run", "--json"], endpoint, home)
    assert dry.returncode == 0, dry.stderr
    plan = json.loads(dry.stdout)
    assert plan["steps"] == [0, 10, 20, 30]
    assert {c["revision"]: c["commit"] for c in plan["checkpoints"]} == {
        f"step{s}": shas[f"step{s}"] for s in (0, 10, 20, 30)}
    assert all(c["bytes"] > 0 for c in plan["checkpoints"])
    assert plan["duplicates"] == {"30": 20}
    assert not list((home / "hub").rglob("*.safetensors")), "a dry run downloads no weights"
    assert not store.exists()

    run = _cli(["EleutherAI/pythia-tiny", "--steps", "all", "--probe", probe, "--pooling", "mean",
                "--out", store, "--cache", "drop", "--json"], endpoint, home)
    assert run.returncode == 0, run.stderr
    ds = xr.open_zarr(store)
    assert list(ds.step.values) == [0, 10, 20, 30]
    assert [str(c) for c in ds.commit.values] == [shas[f"step{s}"] for s in (0, 10, 20, 30)]
    assert list(ds.duplicate_of.values) == [-1, -1, -1, 20]
    np.testing.assert_array_equal(ds.activations.sel(step=30).values,
                                  ds.activations.sel(step=20).values)
    assert not np.array_equal(ds.activations.sel(step=10).values, ds.activations.sel(step=20).values)
    assert not list((home / "hub").rglob("snapshots/*/model.safetensors")), "--cache drop"
    for path in store.rglob("*"):
        if path.is_file():
            assert TOKEN.encode() not in path.read_bytes(), path
    assert TOKEN not in run.stdout + run.stderr + dry.stdout + dry.stderr


@pytest.mark.parametrize(
    ("repo", "steps", "commits"),
    [("allenai/olmo-tiny", [0, 1000], ["olmo:step0-tokens0B", "olmo:step1000-tokens4B"]),
     ("org/trainer-tiny", [5, 15], ["trainer:main", "trainer:main"])],
    ids=["olmo-branches", "trainer-subfolders"],
)
def test_other_families_audit_end_to_end(hub, tmp_path, repo, steps, commits):
    endpoint, shas, probe = hub
    run = _cli([repo, "--steps", "all", "--probe", probe, "--out", tmp_path / "s.zarr", "--json"],
               endpoint, tmp_path / "home")
    assert run.returncode == 0, run.stderr
    ds = xr.open_zarr(tmp_path / "s.zarr")
    assert list(ds.step.values) == steps and bool(ds.done.all())
    assert [str(c) for c in ds.commit.values] == [shas[k] for k in commits]
    width = int(ds.width.sel(layer="lm_head"))
    assert np.isfinite(ds.activations.sel(step=steps[-1], layer="lm_head").values[:, :width]).all()


def test_weights_only_dry_run_reads_headers_only(hub, tmp_path):
    endpoint, _, _ = hub
    home = tmp_path / "home"
    dry = _cli(["EleutherAI/pythia-tiny", "--no-probe", "--dry-run", "--json"], endpoint, home)
    assert dry.returncode == 0, dry.stderr
    plan = json.loads(dry.stdout)
    assert "gpt_neox.layers.0.mlp.dense_h_to_4h" in [layer["name"] for layer in plan["layers"]]
    assert plan["probe"] is None
    assert not list((home / "hub").rglob("*.safetensors")), "headers only, no weights"


def test_missing_repo_and_unmatched_pattern_exit_3(hub, tmp_path):
    endpoint, _, probe = hub
    missing = _cli(["EleutherAI/no-such-model", "--probe", probe, "--dry-run"], endpoint,
                   tmp_path / "home")
    assert missing.returncode == 3, missing.stderr
    assert "EleutherAI/no-such-model" in missing.stderr and "not found" in missing.stderr
    unmatched = _cli(["EleutherAI/pythia-tiny", "--revision-pattern", r"ckpt_(?P<step>\d+)",
                      "--probe", probe, "--dry-run"], endpoint, tmp_path / "home")
    assert unmatched.returncode == 3, unmatched.stderr
    assert "step0" in unmatched.stderr  # the branches that exist are listed


def test_hub_source_without_probe_says_to_pass_probe_or_weights_only(hub, tmp_path):
    endpoint, _, _ = hub
    dry = _cli(["EleutherAI/pythia-tiny", "--dry-run"], endpoint, tmp_path / "home")
    assert dry.returncode == 3, dry.stderr
    said = " ".join(dry.stderr.split())
    assert "EleutherAI/pythia-tiny" in said and "--probe" in said
    assert "--weights-only" in said and "--no-probe" in said
    assert "does not exist" not in said  # not a local-path message


def test_force_moved_branch_is_named_and_re_audited_on_request(tmp_path):
    """``step10`` force-moved to another commit after the audit: a rerun keeps the stored
    step and names step, label, old and new commit; ``--reaudit-moved`` rewrites that step
    (and its commit) into the same store and keeps the others."""
    from tests._helpers.hub import _GIT_ENV, rev_parse

    if olah_cli() is None:
        missing("olah is not installed (pip install -e '.[test]')")
    server = OlahServer(tmp_path / "olah")
    revisions = {s: _revision("neox", s) for s in (0, 10, 20)}
    repo = server.repo_path("org/moving")
    shas = build_git_repo(repo, {"main": revisions[20],
                                 **{f"step{s}": r for s, r in revisions.items()}})
    endpoint = server.start()
    try:
        probe = tmp_path / "probe.jsonl"
        probe.write_text("".join(json.dumps({"text": t, "label": lab}) + "\n"
                                 for t, lab in zip(TEXTS, LABELS, strict=True)))
        store, home = tmp_path / "s.zarr", tmp_path / "home"
        audit = ["org/moving", "--steps", "all", "--probe", probe, "--out", store]
        first = _cli(audit, endpoint, home)
        assert first.returncode == 0, first.stderr
        before = xr.open_zarr(store).activations.load()

        subprocess.run(["git", "branch", "-f", "step10", shas["step0"]], cwd=repo, check=True,
                       env={**os.environ, **_GIT_ENV})
        assert rev_parse(repo, "step10") == shas["step0"]
        kept = _cli(audit, endpoint, home)
        assert kept.returncode == 0, kept.stderr
        said = " ".join(kept.stderr.split())
        assert "step 10 (step10)" in said and "--reaudit-moved" in said, said
        assert shas["step10"] in said and shas["step0"] in said, said
        assert "0 step(s) written, 3 already done" in kept.stdout
        ds = xr.open_zarr(store)
        assert str(ds.commit.sel(step=10).values) == shas["step10"]
        np.testing.assert_array_equal(ds.activations.values, before.values)

        dry = _cli([*audit, "--reaudit-moved", "--dry-run", "--json"], endpoint, home)
        assert dry.returncode == 0, dry.stderr
        plan = json.loads(dry.stdout)
        assert plan["moved"] == [{"step": 10, "label": "step10", "stored_commit": shas["step10"],
                                  "current_commit": shas["step0"], "reaudit": True}]
        assert plan["already_done"] == [0, 20]

        redo = _cli([*audit, "--reaudit-moved"], endpoint, home)
        assert redo.returncode == 0, redo.stderr
        assert "1 step(s) written, 2 already done" in redo.stdout
        ds = xr.open_zarr(store)
        assert [str(c) for c in ds.commit.values] == [shas["step0"], shas["step0"], shas["step20"]]
        assert bool(ds.done.all())
        np.testing.assert_array_equal(ds.activations.sel(step=10).values,
                                      before.sel(step=0).values)  # step10 now holds step 0
        for step in (0, 20):
            np.testing.assert_array_equal(ds.activations.sel(step=step).values,
                                          before.sel(step=step).values)
    finally:
        server.stop()
