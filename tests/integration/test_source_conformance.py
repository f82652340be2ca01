"""Every built-in source family passes :class:`flq_audit.testing.SourceTests`: local folders in
several layouts, and Hub repositories (branches, ``checkpoint-N/`` subfolders, sharded
weights, ``--cache drop``) served by olah on loopback."""

from __future__ import annotations

import json
from pathlib import Path
from typing import ClassVar

import pytest
import torch
from safetensors.torch import save_file

from flq_audit.sources import HubSource, LocalFolderSource
from flq_audit.testing import SourceTests
from tests._helpers.cli import cli_env, describe, run_cli
from tests._helpers.hub import (
    OLAH_MISSING,
    OlahServer,
    build_git_repo,
    olah_cli,
    safetensors_bytes,
    sharded,
    tiny_state,
)
from tests._helpers.requires import missing
from tests._helpers.runs import make_run, state_for

STEPS = (0, 10, 20)


# ------------------------------------------------------------------ local folders
class TestLocalFilePerStep(SourceTests):
    """``run/step_N.safetensors`` beside ``model_spec.json`` and ``probe.npz``."""

    @pytest.fixture
    def source_spec(self, tmp_path: Path) -> str:
        return str(make_run(tmp_path / "run", STEPS))

    @pytest.fixture
    def source(self, source_spec: str) -> LocalFolderSource:
        return LocalFolderSource(source_spec)

    @pytest.fixture
    def expected_steps(self) -> tuple[int, ...]:
        return STEPS

    def expected_state(self, step: int):
        return state_for(step)


class TestLocalPickles(TestLocalFilePerStep):
    """``run/epoch_N.pt`` torch pickles of plain state dicts, and a notes file left out."""

    @pytest.fixture
    def source_spec(self, tmp_path: Path) -> str:
        root = tmp_path / "run"
        root.mkdir()
        for step in STEPS:
            torch.save(state_for(step), root / f"epoch_{step}.pt")
        (root / "notes.txt").write_text("not a checkpoint")
        return str(root)

    def test_the_notes_are_left_out(self, source, refs) -> None:
        assert [e.name for e in source.left_out()] == ["notes.txt"]


class TestLocalShardedFolders(TestLocalFilePerStep):
    """``run/checkpoint-N/`` folders of sharded safetensors with their index."""

    @pytest.fixture
    def source_spec(self, tmp_path: Path) -> str:
        root = tmp_path / "run"
        for step in STEPS:
            folder = root / f"checkpoint-{step}"
            folder.mkdir(parents=True)
            for name, data in sharded(state_for(step), 2).items():
                (folder / name).write_bytes(data)
        return str(root)

    def test_both_shards_make_one_checkpoint(self, refs) -> None:
        assert all(len(ref.files) == 2 for ref in refs)


class TestLocalStepsFromInside(TestLocalFilePerStep):
    """``--step-from-key step``: names without steps, each step stored in the metadata."""

    @pytest.fixture
    def source_spec(self, tmp_path: Path) -> str:
        root = tmp_path / "run"
        root.mkdir()
        for i, step in enumerate(STEPS):
            state = {k: v.contiguous() for k, v in state_for(step).items()}
            save_file(state, str(root / f"weights-{'abc'[i]}.safetensors"),
                      metadata={"step": str(step)})
        return str(root)

    @pytest.fixture
    def source(self, source_spec: str) -> LocalFolderSource:
        return LocalFolderSource(source_spec, step_from_key="step")

    def test_a_weights_only_audit_stores_every_step(self) -> None:
        pytest.skip("this layout needs --step-from-key (its audit is in test_sources.py)")


# ------------------------------------------------------------------ the Hub
def _revision(step: int) -> dict[str, bytes]:
    return {"config.json": json.dumps({"model_type": "tiny"}).encode(),
            "model.safetensors": safetensors_bytes(tiny_state(step))}


REPOS = {
    "org/branches": {"main": _revision(20), "step0": _revision(0), "step10": _revision(10),
                     "step20": _revision(20), "step30": _revision(20)},
    "org/folders": {"main": {f"checkpoint-{s}/{name}": data for s in STEPS
                             for name, data in _revision(s).items()}},
    "org/shards": {f"step{s}": {"config.json": b"{}", **sharded(tiny_state(s), 2)} for s in STEPS},
}


@pytest.fixture(scope="module")
def olah(tmp_path_factory):
    """An olah server over ``REPOS``: its endpoint."""
    if olah_cli() is None:
        missing(OLAH_MISSING)
    server = OlahServer(tmp_path_factory.mktemp("olah-conformance"))
    for repo, branches in REPOS.items():
        build_git_repo(server.repo_path(repo), branches)
    endpoint = server.start()
    try:
        yield endpoint
    finally:
        server.stop()


@pytest.mark.hub
class TestHubBranches(SourceTests):
    """One branch per step (``stepN``), a duplicate branch, the Hub cache kept."""

    repo = "org/branches"
    steps: tuple[int, ...] = (0, 10, 20, 30)
    options: ClassVar[dict[str, str]] = {}

    @pytest.fixture
    def source_spec(self) -> str:
        return self.repo

    @pytest.fixture
    def source(self, source_spec: str, olah: str, tmp_path: Path) -> HubSource:
        from huggingface_hub import HfApi

        return HubSource(source_spec, api=HfApi(endpoint=olah), cache_dir=tmp_path / "hf-cache",
                         **self.options)

    @pytest.fixture(autouse=True)
    def _endpoint(self, olah: str) -> None:
        self.endpoint = olah

    def audit_weights(self, spec: str, out: Path) -> None:
        """Through the CLI, whose Hub client reads ``HF_ENDPOINT`` at start-up."""
        args = ["--cache", "drop"] if self.options.get("cache") == "drop" else []
        result = run_cli(spec, "--weights-only", "--out", out, *args,
                         env=cli_env(HF_ENDPOINT=self.endpoint, HF_HUB_OFFLINE="0"))
        assert result.returncode == 0, describe(result)

    @pytest.fixture
    def expected_steps(self) -> tuple[int, ...]:
        return self.steps

    def expected_state(self, step: int):
        return tiny_state(20 if step == 30 else step)

    def test_the_duplicate_branch_is_found(self, source, refs) -> None:
        assert source.duplicates(refs) == {30: 20}


@pytest.mark.hub
class TestHubSubfolders(TestHubBranches):
    """``checkpoint-N/`` folders of one revision."""

    repo = "org/folders"
    steps = STEPS

    def expected_state(self, step: int):
        return tiny_state(step)

    def test_the_duplicate_branch_is_found(self, source, refs) -> None:
        assert source.duplicates(refs) == {}


@pytest.mark.hub
class TestHubShardsDropped(TestHubSubfolders):
    """Sharded weights per branch, with ``cache="drop"`` (the source frees what it fetched)."""

    repo = "org/shards"
    options: ClassVar[dict[str, str]] = {"cache": "drop"}

    def test_release_deletes_the_downloaded_shards(self, source, refs) -> None:
        paths = source.fetch(refs[0])
        assert source.release(refs[0]) is True
        assert not any(p.exists() for p in paths)
