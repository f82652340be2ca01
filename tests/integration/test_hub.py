"""HubSource against real Hub-compatible servers on loopback.

One olah server (PyPI ``olah``, offline mode) serves git repositories built here, with
branches per step and LFS-pointer weight files; a stdlib stub answers the error paths olah
cannot produce (missing revision, gated repo, 5xx). No monkeypatching: every source gets
``HfApi(endpoint=...)`` and its own cache folder.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from flq_audit.errors import CheckpointNotFoundError, FlqAuditWarning, IntegrityError, SourceError
from flq_audit.sources import HubSource, LocalFolderSource, open_source
from flq_audit.weights import load_state_dict
from tests._helpers.hub import (
    OlahServer,
    StubHub,
    build_git_repo,
    json_route,
    olah_cli,
    safetensors_bytes,
    sharded,
    tiny_state,
)
from tests._helpers.requires import missing

pytestmark = pytest.mark.hub

SHA = "a" * 40


def _single(seed: int, extra: dict[str, bytes] | None = None) -> dict[str, bytes]:
    weights = safetensors_bytes(tiny_state(seed))
    return {"config.json": b'{"model_type": "tiny"}', "model.safetensors": weights, **(extra or {})}


def _legacy_bytes() -> bytes:
    import io

    buf = io.BytesIO()
    torch.save(tiny_state(5), buf)
    return buf.getvalue()


def _trainer_folder(step: int) -> dict[str, bytes]:
    d = f"checkpoint-{step}/"
    return {d + "model.safetensors": safetensors_bytes(tiny_state(step)), d + "config.json": b"{}",
            d + "optimizer.pt": b"\0" * 512, d + "rng_state.pth": b"\1" * 64,
            d + "trainer_state.json": json.dumps({"global_step": step}).encode()}


REPOS: dict[str, dict[str, dict[str, bytes]]] = {
    "EleutherAI/pythia-tiny": {
        "main": _single(2000, {"README.md": b"# tiny"}),
        "step0": _single(0), "step1000": _single(1000), "step2000": _single(2000),
        "docs": {"README.md": b"not a checkpoint"},
    },
    "org/duplicated": {"step0": _single(0), "step1000": _single(0), "step2000": _single(2000)},
    "org/sharded": {"main": {"README.md": b"x"}, "step0": {"config.json": b"{}", **sharded(tiny_state(0), 3)},
                    "step10": {"config.json": b"{}", **sharded(tiny_state(10), 3)}},
    "org/trainer": {"main": {"README.md": b"trainer push", **_trainer_folder(10), **_trainer_folder(20),
                             **_trainer_folder(30)}},
    "allenai/olmo-tiny": {"main": _single(2), "step0-tokens0B": _single(0), "step1000-tokens4B": _single(1),
                          "step2000-tokens8B": _single(2)},
    "allenai/olmo2-tiny": {"stage1-step0-tokens0B": _single(0), "stage1-step100-tokens1B": _single(1),
                           "stage2-ingredient1-step0-tokens0B": _single(2),
                           "stage2-ingredient1-step10-tokens1B": _single(3)},
    "org/legacy": {"step5": {"pytorch_model.bin": _legacy_bytes(), "config.json": b"{}"}},
    "org/custom": {"main": {"README.md": b"x"}, "run-iter0005": _single(5), "run-iter0010": _single(10),
                   "run-iter0015": {"README.md": b"this revision was lost"}},
    "org/no-checkpoints": {"main": {"README.md": b"x"}, "dev": {"README.md": b"y"}},
    "google/multiberts-seed_0-step_0k": {"main": _single(0)},
    "google/multiberts-seed_0-step_20k": {"main": _single(20)},
}


@pytest.fixture(scope="session")
def hub(tmp_path_factory):
    """An olah server over REPOS: yields ``(endpoint, {repo: {branch: sha}}, server)``."""
    if olah_cli() is None:
        missing("olah is not installed (pip install -e '.[test]')")
    work = tmp_path_factory.mktemp("olah")
    server = OlahServer(work)
    shas = {repo: build_git_repo(server.repo_path(repo), branches) for repo, branches in REPOS.items()}
    endpoint = server.start()
    try:
        yield endpoint, shas, server
    finally:
        server.stop()


@pytest.fixture
def source(hub, tmp_path):
    """``source(repo, **options)``: a HubSource on the loopback server with a private cache."""
    from huggingface_hub import HfApi

    api = HfApi(endpoint=hub[0])

    def make(repo: str, **options) -> HubSource:
        options.setdefault("cache_dir", tmp_path / "hf-cache")
        return HubSource(repo, api=api, **options)

    return make


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _cached_weights(cache: Path) -> list[str]:
    return sorted(p.name for p in cache.rglob("*") if p.suffix in (".safetensors", ".bin") and p.exists())


# ------------------------------------------------------------------ discovery
def test_pythia_branches_pinned_to_commits(source, hub):
    shas = hub[1]["EleutherAI/pythia-tiny"]
    refs = source("EleutherAI/pythia-tiny").list_refs()
    assert [r.step for r in refs] == [0, 1000, 2000]
    for ref in refs:
        data = REPOS["EleutherAI/pythia-tiny"][ref.revision]["model.safetensors"]
        assert ref.revision == ref.label == f"step{ref.step}"
        assert ref.commit == shas[ref.revision] and len(ref.commit) == 40
        assert ref.location == "EleutherAI/pythia-tiny"
        assert (ref.files, ref.fmt) == (("model.safetensors",), "safetensors")
        assert ref.size_bytes == len(data)
        assert ref.lfs_sha256 == (_sha256(data),)
        assert ref.extra["family"] == "pythia"


def test_listing_downloads_no_weights(source, tmp_path):
    for repo in ("EleutherAI/pythia-tiny", "org/sharded", "org/trainer"):
        assert source(repo).list_refs()
    assert _cached_weights(tmp_path / "hf-cache") == []  # only shard indexes were read


def test_duplicate_branches_are_flagged(source):
    src = source("org/duplicated")
    refs = src.list_refs()
    assert src.duplicates(refs) == {1000: 0}
    assert src.duplicates([r for r in refs if r.step != 0]) == {}


def test_sharded_safetensors(source, hub):
    src = source("org/sharded")
    refs = src.list_refs()
    assert [r.step for r in refs] == [0, 10]
    ref = refs[1]
    shards = {k: v for k, v in REPOS["org/sharded"]["step10"].items() if k.endswith(".safetensors")}
    assert ref.files == tuple(sorted(shards))
    assert ref.size_bytes == sum(map(len, shards.values()))
    assert ref.lfs_sha256 == tuple(_sha256(shards[f]) for f in ref.files)
    paths = src.fetch(ref)
    assert [p.read_bytes() for p in paths] == [shards[f] for f in ref.files]
    state = load_state_dict(paths)
    assert all(torch.equal(state[k], v) for k, v in tiny_state(10).items())
    assert (src.snapshot_dir(ref) / "model.safetensors.index.json").is_file()


def test_olmo_and_olmo2_coordinates(source):
    refs = source("allenai/olmo-tiny").list_refs()
    assert [(r.step, int(r.extra["tokens"])) for r in refs] == [(0, 0), (1000, 4 * 10**9), (2000, 8 * 10**9)]
    refs = source("allenai/olmo2-tiny").list_refs()
    assert [r.step for r in refs] == [0, 100, 101, 111]  # stage 2 laid after stage 1
    last = refs[-1]
    assert (last.revision, last.extra["stage"], last.extra["ingredient"], last.extra["raw_step"]) == (
        "stage2-ingredient1-step10-tokens1B", "2", "1", "10")


def test_custom_revision_pattern(source, hub):
    with pytest.warns(FlqAuditWarning, match="run-iter0015 holds no weight files"):
        refs = source("org/custom", revision_pattern=r"run-iter(?P<step>\d+)").list_refs()
    assert [(r.step, r.commit) for r in refs] == [
        (5, hub[1]["org/custom"]["run-iter0005"]), (10, hub[1]["org/custom"]["run-iter0010"])]


def test_one_repo_per_step_template(source, hub):
    src = source("hf://google/multiberts-seed_0-step_{step}k", template_steps=[20, 0])
    refs = src.list_refs()
    assert [(r.step, r.location, r.revision) for r in refs] == [
        (0, "google/multiberts-seed_0-step_0k", "main"), (20, "google/multiberts-seed_0-step_20k", "main")]
    assert refs[1].commit == hub[1]["google/multiberts-seed_0-step_20k"]["main"]
    assert src.fetch(refs[1])[0].read_bytes() == safetensors_bytes(tiny_state(20))
    assert src.describe() == "hf://google/multiberts-seed_0-step_{step}k"


def test_legacy_bin_loads_weights_only(source):
    src = source("org/legacy")
    (ref,) = src.list_refs()
    assert (ref.fmt, ref.files) == ("pickle", ("pytorch_model.bin",))
    state = load_state_dict(src.fetch(ref))
    assert all(torch.equal(state[k], v) for k, v in tiny_state(5).items())


# ------------------------------------------------------------------ fetch and cache
def test_fetch_returns_original_bytes_and_config(source):
    src = source("EleutherAI/pythia-tiny")
    ref = src.list_refs()[1]
    (path,) = src.fetch(ref)
    assert path.read_bytes() == REPOS["EleutherAI/pythia-tiny"]["step1000"]["model.safetensors"]
    snapshot = src.snapshot_dir(ref)
    assert path.parent == snapshot and snapshot.name == ref.commit
    assert (snapshot / "config.json").read_bytes() == b'{"model_type": "tiny"}'
    assert not (snapshot / "README.md").exists()


def test_fetch_checks_the_cached_blob_against_the_listed_sha256(source):
    src = source("EleutherAI/pythia-tiny")
    ref = src.list_refs()[0]
    src.fetch(ref)
    forged = dataclasses.replace(ref, lfs_sha256=("0" * 64,))
    with pytest.raises(IntegrityError, match="the Hub listed 0000"):
        src.fetch(forged)


def test_cache_drop_releases_the_revision(source):
    src = source("EleutherAI/pythia-tiny", cache="drop")
    refs = src.list_refs()
    for ref in refs[:2]:
        src.fetch(ref)
    assert src.release(refs[0]) is True
    assert not src.snapshot_dir(refs[0]).exists()
    assert src.snapshot_dir(refs[1]).is_dir()  # other revisions stay
    assert src.release(refs[0]) is False  # already gone
    keep = source("EleutherAI/pythia-tiny")
    assert keep.release(refs[1]) is False and keep.snapshot_dir(refs[1]).is_dir()


def test_trainer_subfolders(source, hub, tmp_path):
    src = source("org/trainer", cache="drop")
    refs = src.list_refs()  # no branch names a step: falls back to checkpoint-N/ on main
    main = hub[1]["org/trainer"]["main"]
    assert [(r.step, r.label, r.commit, r.revision) for r in refs] == [
        (s, f"checkpoint-{s}/", main, "main") for s in (10, 20, 30)]
    assert refs[0].files == ("checkpoint-10/model.safetensors",)
    for ref in refs[:2]:
        assert src.fetch(ref)[0].read_bytes() == safetensors_bytes(tiny_state(ref.step))
    assert (src.snapshot_dir(refs[0]) / "config.json").is_file()
    cached = {p.name for p in (tmp_path / "hf-cache").rglob("*")}
    assert not cached & {"optimizer.pt", "rng_state.pth", "trainer_state.json"}  # never training state
    assert src.release(refs[0]) is True
    assert not src.snapshot_dir(refs[0]).exists()
    assert src.fetch(refs[1])[0].read_bytes() == safetensors_bytes(tiny_state(20))  # neighbour intact
    assert source("org/trainer", subfolders=True).list_refs() == refs


def test_offline_listing_from_a_cache_filled_online(source):
    online = source("org/sharded")
    refs = online.list_refs()
    for ref in refs:
        online.fetch(ref)
    offline = source("org/sharded", offline=True)
    again = offline.list_refs()
    assert [(r.step, r.commit, r.files, r.size_bytes) for r in again] == [
        (r.step, r.commit, r.files, r.size_bytes) for r in refs]
    assert [r.lfs_sha256 for r in again] == [r.lfs_sha256 for r in refs]
    originals = [p.read_bytes() for p in online.fetch(refs[0])]
    assert [p.read_bytes() for p in offline.fetch(again[0])] == originals


# ------------------------------------------------------------------ errors
def test_missing_repo(source):
    from flq_audit.cli._errors import EXIT_INPUT_MISSING, exit_code_for

    with pytest.raises(CheckpointNotFoundError, match="repository 'org/nope' not found") as info:
        source("org/nope").list_refs()
    assert (info.value.repo_id, info.value.revision) == ("org/nope", None)
    assert exit_code_for(info.value) == EXIT_INPUT_MISSING


def test_no_matching_branches_lists_them(source):
    with pytest.raises(CheckpointNotFoundError, match="no branch of 'org/no-checkpoints'") as info:
        source("org/no-checkpoints").list_refs()
    assert "dev" in str(info.value) and "main" in str(info.value)
    assert "--revision-pattern" in str(info.value)
    with pytest.raises(CheckpointNotFoundError, match="matching"):
        source("EleutherAI/pythia-tiny", revision_pattern=r"iter(?P<step>\d+)", subfolders=False).list_refs()


def test_missing_template_step(source):
    src = source("google/multiberts-seed_0-step_{step}k", template_steps=[0, 40])
    with pytest.raises(CheckpointNotFoundError, match="step 40: repository") as info:
        src.list_refs()
    assert info.value.step == 40


def test_open_source_picks_hub_after_local(hub, tmp_path, monkeypatch):
    from huggingface_hub import HfApi

    src = open_source("hf://EleutherAI/pythia-tiny", api=HfApi(endpoint=hub[0]), cache_dir=tmp_path,
                      revision_pattern=None)
    assert isinstance(src, HubSource) and src.describe() == "hf://EleutherAI/pythia-tiny"
    assert [r.step for r in src.list_refs()] == [0, 1000, 2000]
    local = tmp_path / "org" / "run"
    local.mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    assert isinstance(open_source("org/run"), LocalFolderSource)
    with pytest.raises(SourceError, match="revision_pattern do not apply to local"):
        open_source("org/run", revision_pattern="x(?P<step>1)")


def _stub_routes(repo: str, **overrides) -> dict:
    tree = [{"type": "file", "oid": "b" * 40, "size": 3, "path": "model.safetensors",
             "lfs": {"oid": "c" * 64, "size": 3, "pointerSize": 130}}]
    routes = {
        f"GET /api/models/{repo}/refs": json_route(
            {"branches": [{"name": "step1", "ref": "refs/heads/step1", "targetCommit": SHA}],
             "tags": [], "converts": []}),
        f"GET /api/models/{repo}/tree/{SHA}": json_route(tree),
        f"GET /api/models/{repo}/revision/main": json_route({"id": repo, "sha": SHA, "siblings": []}),
    }
    routes.update(overrides)
    return routes


def _stub_source(stub: StubHub, repo: str, tmp_path: Path, **options) -> HubSource:
    from huggingface_hub import HfApi

    return HubSource(repo, api=HfApi(endpoint=stub.endpoint), cache_dir=tmp_path / "c", **options)


def test_missing_revision(tmp_path):
    routes = _stub_routes("org/r", **{"GET /api/models/org/r/revision/nope": json_route(
        {"error": "Invalid rev id: nope"}, 404, {"X-Error-Code": "RevisionNotFound"})})
    with StubHub(routes) as stub:
        src = _stub_source(stub, "org/r", tmp_path, subfolders=True, revision="nope")
        with pytest.raises(CheckpointNotFoundError, match="revision 'nope' not found") as info:
            src.list_refs()
    assert (info.value.repo_id, info.value.revision) == ("org/r", "nope")


def test_gated_repo_401_mentions_token_but_never_prints_it(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_NeverPrintThisSecret")
    gated = json_route({"error": "Access to model org/g is restricted."}, 401, {"X-Error-Code": "GatedRepo"})
    with StubHub(_stub_routes("org/g", **{"GET /api/models/org/g/refs": gated})) as stub:
        src = _stub_source(stub, "org/g", tmp_path)
        with pytest.raises(SourceError, match="is gated") as info:
            src.list_refs()
    err = info.value
    assert not isinstance(err, CheckpointNotFoundError)
    assert "HF_TOKEN" in str(err) and err.repo_id == "org/g"
    assert "NeverPrintThisSecret" not in str(err) + json.dumps(err.to_dict()) + repr(err)


def test_transient_errors_are_retried(tmp_path):
    answers = iter([(503, {}, b"busy"), (502, {}, b"bad gateway")])
    ok = _stub_routes("org/f")["GET /api/models/org/f/refs"]

    def flaky():
        return next(answers, ok)

    with StubHub(_stub_routes("org/f", **{"GET /api/models/org/f/refs": flaky})) as stub:
        src = _stub_source(stub, "org/f", tmp_path)
        src.retry_delays = (0.0, 0.0, 0.0)
        (ref,) = src.list_refs()
    assert (ref.step, ref.commit, ref.size_bytes) == (1, SHA, 3)
    assert stub.hits["GET /api/models/org/f/refs"] == 3


def test_persistent_5xx_gives_a_clear_error(tmp_path):
    with StubHub({"GET /api/models/org/down/refs": (503, {}, b"down")}) as stub:
        src = _stub_source(stub, "org/down", tmp_path)
        src.retry_delays = (0.0, 0.0)
        with pytest.raises(SourceError, match="did not answer for org/down after retries"):
            src.list_refs()
    assert stub.hits["GET /api/models/org/down/refs"] == 3


# ------------------------------------------------------------------ offline, from a hand-made cache
def test_offline_from_prepopulated_cache_in_subprocess(tmp_path):
    cache = tmp_path / "cache"
    repo = cache / "models--EleutherAI--pythia-cached"
    commits = {}
    for step in (0, 1000):
        commit = hashlib.sha1(f"step{step}".encode()).hexdigest()
        commits[step] = commit
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / f"step{step}").write_text(commit)
        snap = repo / "snapshots" / commit
        snap.mkdir(parents=True)
        (snap / "model.safetensors").write_bytes(safetensors_bytes(tiny_state(step)))
        (snap / "config.json").write_text("{}")
    (repo / "refs" / "main").write_text(commits[1000])
    script = textwrap.dedent("""
        import json, sys
        from flq_audit.sources import open_source
        from flq_audit.errors import CheckpointNotFoundError
        src = open_source("EleutherAI/pythia-cached")
        refs = src.list_refs()
        paths = [str(src.fetch(r)[0]) for r in refs]
        try:
            open_source("EleutherAI/not-cached").list_refs()
            missing = None
        except CheckpointNotFoundError as err:
            missing = str(err)
        print(json.dumps({"steps": [r.step for r in refs], "commits": [r.commit for r in refs],
                          "sizes": [r.size_bytes for r in refs], "paths": paths, "missing": missing,
                          "offline": src.offline}))
    """)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache), "HF_ENDPOINT": "http://127.0.0.1:9"}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env,
                          cwd=Path(__file__).parents[2], timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["offline"] is True
    assert out["steps"] == [0, 1000] and out["commits"] == [commits[0], commits[1000]]
    originals = [safetensors_bytes(tiny_state(s)) for s in (0, 1000)]
    assert [Path(p).read_bytes() for p in out["paths"]] == originals
    assert out["sizes"] == [len(safetensors_bytes(tiny_state(s))) for s in (0, 1000)]
    assert "not-cached" in out["missing"] and "offline" in out["missing"]
