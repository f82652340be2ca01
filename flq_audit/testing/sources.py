"""``SourceTests``: the conformance suite every checkpoint source family passes.

Subclass it in a test module and provide the fixtures ``source`` (an instance over prepared
checkpoints) and ``expected_steps`` (their steps, known independently); ``source_spec`` (the
CLI ``SOURCE`` that opens it) enables the registry and audit checks, and
:meth:`SourceTests.expected_state` the tensor checks::

    class TestMySource(SourceTests):
        @pytest.fixture
        def source(self, tmp_path):
            return MySource(make_checkpoints(tmp_path))

        @pytest.fixture
        def expected_steps(self):
            return [0, 10, 20]

Every test of the suite is a method whose name starts with ``test_``; pytest collects them
on the subclass (``Test...``), never on this base class.
"""

from __future__ import annotations

import dataclasses
import hashlib
import pickle
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import pytest

from flq_audit.errors import FlqAuditError
from flq_audit.sources import CheckpointRef, CheckpointSource, LeftOut, open_source

FORMATS = ("safetensors", "pickle")
_COMMIT = re.compile(r"[0-9a-f]{40}")


def roundtrip(obj: Any) -> Any:
    """``obj`` after the trip to a dask worker (cloudpickle, as dask falls back to it)."""
    try:
        import cloudpickle
    except ImportError:  # dask is not installed: plain pickle
        return pickle.loads(pickle.dumps(obj))
    return cloudpickle.loads(cloudpickle.dumps(obj))


def _digest(paths: Sequence[Path]) -> str:
    sha = hashlib.sha256()
    for path in paths:
        sha.update(Path(path).read_bytes())
    return sha.hexdigest()


class SourceTests:
    """Conformance tests of one :class:`~flq_audit.sources.CheckpointSource` family."""

    #: The plan travels to dask workers with its source: the source must survive pickling.
    goes_to_workers: ClassVar[bool] = True

    # ------------------------------------------------------------------ fixtures to provide
    @pytest.fixture
    def source(self) -> CheckpointSource:
        """The source under test, over checkpoints the test prepared."""
        raise NotImplementedError("a SourceTests subclass provides the fixture 'source'")

    @pytest.fixture
    def expected_steps(self) -> Sequence[int]:
        """The steps the prepared checkpoints hold, in any order."""
        raise NotImplementedError("a SourceTests subclass provides the fixture 'expected_steps'")

    @pytest.fixture
    def source_spec(self) -> str | None:
        """The CLI ``SOURCE`` that opens the same checkpoints (``None``: checks skipped)."""
        return None

    def expected_state(self, step: int) -> Mapping[str, Any] | None:
        """The tensors the checkpoint of ``step`` holds, as saved (``None``: not checked)."""
        return None

    def absent_ref(self, ref: CheckpointRef, step: int) -> CheckpointRef:
        """A ref at ``step`` whose files do not exist (what fetching a vanished step sees)."""
        return dataclasses.replace(ref, step=step, files=tuple(f + ".absent" for f in ref.files),
                                   lfs_sha256=(), blob_ids=(), size_bytes=0)

    def audit_weights(self, spec: str, out: Path) -> None:
        """Audit ``spec`` weights-only into ``out`` (a subclass may run the CLI instead)."""
        from flq_audit import api

        result = api.audit(spec, weights_only=True, out=out)
        assert not result.failed, result.failed

    # ------------------------------------------------------------------ shared
    @pytest.fixture
    def refs(self, source: CheckpointSource) -> list[CheckpointRef]:
        return source.list_refs()

    # ------------------------------------------------------------------ the family
    def test_family_declares_its_name_and_abilities(self, source: CheckpointSource) -> None:
        cls = type(source)
        assert isinstance(cls.name, str) and re.fullmatch(r"[A-Za-z][\w-]*", cls.name), cls.name
        for flag in ("supports_release", "supports_duplicates", "supports_header_shapes",
                     "supports_config_dir"):
            assert isinstance(getattr(cls, flag), bool), flag
        assert isinstance(source, CheckpointSource)

    def test_its_spec_is_claimed_by_the_family(self, source: CheckpointSource,
                                               source_spec: str | None) -> None:
        if source_spec is None:
            pytest.skip("no source_spec fixture: the registry is not checked")
        assert type(source).guess_can_open(source_spec) is True

    def test_open_source_chooses_this_family(self, source: CheckpointSource,
                                             source_spec: str | None) -> None:
        if source_spec is None:
            pytest.skip("no source_spec fixture: the registry is not checked")
        assert type(open_source(source_spec)) is type(source)

    def test_describe_names_the_source(self, source: CheckpointSource, refs) -> None:
        text = source.describe()
        assert isinstance(text, str) and text.strip()
        assert source.describe() == text  # listing does not change it

    # ------------------------------------------------------------------ listing
    def test_list_refs_gives_every_step_sorted_once(self, refs, expected_steps) -> None:
        steps = [ref.step for ref in refs]
        assert steps == sorted(set(steps)), steps
        assert steps == sorted(expected_steps)

    def test_listing_again_gives_the_same_refs(self, source: CheckpointSource, refs) -> None:
        again = source.list_refs()
        assert again == refs
        assert [r.files for r in again] == [r.files for r in refs]

    def test_refs_carry_their_provenance(self, refs) -> None:
        for ref in refs:
            assert isinstance(ref, CheckpointRef)
            assert isinstance(ref.step, int) and ref.step >= 0, ref
            assert isinstance(ref.label, str) and ref.label.strip(), ref
            assert isinstance(ref.location, str) and ref.location.strip(), ref
            assert ref.files and all(isinstance(f, str) and f for f in ref.files), ref
            assert len(set(ref.files)) == len(ref.files), ref
            assert ref.fmt in FORMATS, ref
            assert isinstance(ref.size_bytes, int) and ref.size_bytes >= 0, ref
            for hashes in (ref.lfs_sha256, ref.blob_ids):
                assert hashes == () or len(hashes) == len(ref.files), ref
            assert all(isinstance(k, str) and isinstance(v, str) for k, v in ref.extra.items())
            assert ref.revision is None or (isinstance(ref.revision, str) and ref.revision)
            if ref.revision is not None:  # a named revision is pinned to its commit
                assert ref.commit is not None and _COMMIT.fullmatch(ref.commit), ref
        assert len({r.label for r in refs}) == len(refs), "two checkpoints share a label"

    def test_left_out_entries_are_explained(self, source: CheckpointSource, refs) -> None:
        entries = source.left_out()
        assert isinstance(entries, list)
        for entry in entries:
            assert isinstance(entry, LeftOut) and entry.name and entry.reason, entry
            assert isinstance(entry.include, str)

    # ------------------------------------------------------------------ fetching
    def test_fetch_returns_files_the_loaders_read(self, source: CheckpointSource, refs) -> None:
        from flq_audit.weights import load_state_dict

        for ref in refs:
            paths = source.fetch(ref)
            assert len(paths) == len(ref.files), ref
            assert all(isinstance(p, Path) and p.is_file() for p in paths), paths
            state = load_state_dict(paths, step=ref.step)
            assert state, ref
            expected = self.expected_state(ref.step)
            if expected is not None:
                assert sorted(state) == sorted(expected), ref.step
                for key, tensor in expected.items():
                    assert state[key].shape == tensor.shape, (ref.step, key)
                    assert bool((state[key] == tensor.to(state[key].dtype)).all()), (ref.step, key)

    def test_tensor_shapes_match_the_loaded_tensors(self, source: CheckpointSource, refs) -> None:
        from flq_audit.weights import load_state_dict

        for ref in refs:
            shapes = source.tensor_shapes(ref)
            state = load_state_dict(source.fetch(ref), step=ref.step)
            assert {k: tuple(v) for k, v in shapes.items()} == {
                k: tuple(v.shape) for k, v in state.items()}, ref.step

    def test_a_missing_checkpoint_names_its_step(self, source: CheckpointSource, refs) -> None:
        step = max(r.step for r in refs) + 7
        with pytest.raises(FlqAuditError) as caught:
            source.fetch(self.absent_ref(refs[-1], step))
        err = caught.value
        assert err.step == step, err  # what the store's error(step) and --json report
        names = [f"step {step}", *(Path(f).name for f in self.absent_ref(refs[-1], step).files)]
        assert any(name in err.message for name in names), err.message

    # ------------------------------------------------------------------ optional abilities
    def test_duplicates_are_byte_identical_earlier_steps(self, source: CheckpointSource,
                                                         refs) -> None:
        found = source.duplicates(refs)
        if not type(source).supports_duplicates:
            assert found == {}
            return
        by_step = {r.step: r for r in refs}
        for step, earlier in found.items():
            assert earlier < step and {step, earlier} <= set(by_step), (step, earlier)
            assert _digest(source.fetch(by_step[step])) == _digest(source.fetch(by_step[earlier]))

    def test_release_frees_only_what_fetch_can_bring_back(self, source: CheckpointSource,
                                                          refs) -> None:
        ref = refs[0]
        before = _digest(source.fetch(ref))
        freed = source.release(ref)
        assert isinstance(freed, bool)
        if not type(source).supports_release:
            assert freed is False
        assert _digest(source.fetch(ref)) == before

    def test_config_dir_holds_a_config(self, source: CheckpointSource, refs) -> None:
        for ref in refs:
            folder = source.config_dir(ref)
            assert folder is None or (Path(folder) / "config.json").is_file(), (ref.step, folder)

    # ------------------------------------------------------------------ workers and audits
    def test_survives_the_trip_to_a_worker(self, source: CheckpointSource, refs) -> None:
        if not self.goes_to_workers:
            pytest.skip("this source never goes to dask workers")
        from flq_audit.weights import load_state_dict

        copy = roundtrip(source)
        assert type(copy) is type(source)
        assert copy.describe() == source.describe()
        assert roundtrip(refs) == refs
        last = refs[-1]
        assert _digest(copy.fetch(last)) == _digest(source.fetch(last))
        assert load_state_dict(copy.fetch(last), step=last.step)

    def test_a_weights_only_audit_stores_every_step(self, source: CheckpointSource, refs,
                                                    source_spec: str | None,
                                                    tmp_path: Path) -> None:
        if source_spec is None:
            pytest.skip("no source_spec fixture: no audit through open_source")
        import numpy as np
        import xarray as xr

        self.audit_weights(source_spec, tmp_path / "conformance.zarr")
        with xr.open_zarr(str(tmp_path / "conformance.zarr"), consolidated=False) as ds:
            assert ds["step"].values.tolist() == [r.step for r in refs]
            assert ds["label"].values.tolist() == [r.label for r in refs]
            assert ds.attrs["source"] == source.describe()
            assert bool(ds["done"].all())
            for ref in refs:
                expected = self.expected_state(ref.step)
                if expected is None:
                    continue
                for layer in ds["layer"].values:
                    weight = np.asarray(expected[f"{layer}.weight"], dtype=np.float64)
                    weight = weight.reshape(weight.shape[0], -1)
                    gram = ds.flq.gram(ref.step, layer).values
                    np.testing.assert_allclose(gram, weight.T @ weight, rtol=1e-5, atol=1e-6,
                                               err_msg=f"step {ref.step} layer {layer}")


__all__ = ["SourceTests", "roundtrip"]
