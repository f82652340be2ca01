"""``--cache drop`` deletes only what the run downloaded: a cache filled before the run keeps
every file byte for byte (a loopback Hub-compatible server, a real HF cache)."""

from __future__ import annotations

import pytest

from tests.faults._tree import tree_hashes
from tests.integration.test_hub import hub, source  # noqa: F401 - fixtures

pytestmark = [pytest.mark.hub, pytest.mark.slow]


def test_cache_drop_keeps_every_file_that_was_cached_before(source, tmp_path):  # noqa: F811
    cache = tmp_path / "hf-cache"
    before_run = source("EleutherAI/pythia-tiny")
    refs = before_run.list_refs()
    before_run.fetch(refs[0])  # the user's own earlier download of step 0
    other = cache / "models--someone--else" / "blobs"
    other.mkdir(parents=True)
    (other / "x").write_bytes(b"another repo's blob")
    cached = tree_hashes(cache)

    dropping = source("EleutherAI/pythia-tiny", cache="drop")
    for ref in refs[:2]:
        dropping.fetch(ref)
        dropping.release(ref)
    after = tree_hashes(cache)
    assert {path: after.get(path) for path in cached} == cached
    assert not dropping.snapshot_dir(refs[1]).exists()  # what this run downloaded is gone
    assert dropping.snapshot_dir(refs[0]).is_dir()
    left = {path for path in set(after) - set(cached)
            if after[path] != "dir" and "/.locks/" not in path}  # huggingface_hub's own locks
    assert left == set()
