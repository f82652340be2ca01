"""``ExtensionTests``: the conformance suite every per-step extension passes.

Subclass it in a test module and provide the fixture ``extension`` (an instance);
``audit_kwargs`` (the arguments of :func:`flq_audit.api.plan_audit`) defaults to a small MLP
run the suite writes itself. A built-in that the plan adds on its own (set ``built_in =
True``) is taken from the plan by name rather than added::

    class TestMyExtension(ExtensionTests):
        @pytest.fixture
        def extension(self):
            return MyExtension()

The suite checks the declarations (name, flags, variables, attributes), that ``preflight``
accepts the plan, that the extension survives the trip to a dask worker, and, through a
real audit, that the store holds exactly what ``on_step`` returned for every step.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest

from flq_audit.audit.extensions.base import StepContext, StepExtension
from flq_audit.constants import FEATURE, GRAM_I, GRAM_J, LAYER, SAMPLE, STEP, TARGET
from flq_audit.store import VariableSpec
from flq_audit.testing._runs import small_run
from flq_audit.testing.sources import roundtrip

#: The outputs a replay can collect for extensions (``replay_outputs``).
REPLAY_OUTPUTS = frozenset({"predictions", "hidden_states"})
#: The dimensions an extension variable may use after ``step``.
STORE_DIMS = frozenset({LAYER, SAMPLE, TARGET, GRAM_I, GRAM_J, FEATURE, "factor_row"})
#: Names the store itself uses.
CORE_NAMES = frozenset({"activations", "gram", "targets", "done", "error", "sha256", "files",
                        "duplicate_of", "step", "label", "commit", "layer", "layer_kind",
                        "depth", "width", "gram_width", "sample", "gram_factor",
                        "gram_eigenvalues", "gram_form", "gram_rows", "factor_row"})


class _Recording:
    """The extension under test, recording what its ``on_step`` returns for each step."""

    def __init__(self, inner: StepExtension) -> None:
        self.inner = inner
        self.name = inner.name
        self.copy_duplicates = inner.copy_duplicates
        self.replay_outputs = inner.replay_outputs
        self.returned: dict[int, dict[str, np.ndarray]] = {}

    def __getattr__(self, attr: str) -> Any:  # variables, preflight, on_batch, after_audit...
        return getattr(self.inner, attr)

    def on_step(self, ctx: StepContext) -> Mapping[str, np.ndarray]:
        values = self.inner.on_step(ctx)
        self.returned[ctx.ref.step] = {k: np.array(v) for k, v in values.items()}
        return values


class ExtensionTests:
    """Conformance tests of one :class:`~flq_audit.audit.extensions.StepExtension`."""

    #: The plan adds this extension itself (a built-in): found in the plan by its name.
    built_in: ClassVar[bool] = False

    # ------------------------------------------------------------------ fixtures to provide
    @pytest.fixture
    def extension(self) -> StepExtension:
        """The extension under test."""
        raise NotImplementedError("an ExtensionTests subclass provides the fixture 'extension'")

    @pytest.fixture
    def audit_kwargs(self, tmp_path: Path) -> dict[str, Any]:
        """Arguments of ``plan_audit`` (``source`` at least): a small MLP run by default."""
        return {"source": str(small_run(tmp_path / "run"))}

    # ------------------------------------------------------------------ shared
    @pytest.fixture
    def plan(self, extension: StepExtension, audit_kwargs: dict[str, Any], tmp_path: Path):
        from flq_audit import api

        kwargs = {"out": tmp_path / "extension.zarr", **audit_kwargs}
        return api.plan_audit(**kwargs, extensions=() if self.built_in else (extension,))

    @pytest.fixture
    def planned(self, plan, extension: StepExtension) -> StepExtension:
        """The plan's instance of the extension."""
        found = [ext for ext in plan.extensions if ext.name == extension.name]
        assert len(found) == 1, f"the plan holds {[e.name for e in plan.extensions]}"
        return found[0]

    # ------------------------------------------------------------------ declarations
    def test_declares_its_name_and_flags(self, extension: StepExtension) -> None:
        assert isinstance(extension, StepExtension)
        assert isinstance(extension.name, str) and re.fullmatch(r"[A-Za-z][\w-]*",
                                                                extension.name), extension.name
        assert isinstance(extension.copy_duplicates, bool)
        assert isinstance(extension.replay_outputs, frozenset)
        assert extension.replay_outputs <= REPLAY_OUTPUTS, extension.replay_outputs

    def test_variables_are_well_formed(self, planned: StepExtension, plan) -> None:
        specs = list(planned.variables(plan.layout))
        names = [spec.name for spec in specs]
        assert len(set(names)) == len(names), names
        for spec in specs:
            assert isinstance(spec, VariableSpec), spec
            assert spec.name.isidentifier() and spec.name not in CORE_NAMES, spec.name
            assert spec.dims[0] == STEP and set(spec.dims[1:]) <= STORE_DIMS, spec
            assert len(set(spec.dims)) == len(spec.dims), spec
            dtype = np.dtype(spec.dtype)
            assert np.array(spec.fill).astype(dtype).item() == spec.fill or np.isnan(spec.fill)
            assert isinstance(spec.attrs.get("long_name"), str) and spec.attrs["long_name"], spec
        assert list(planned.variables(plan.layout)) == specs  # declared the same way each time
        others = {s.name for e in plan.extensions if e is not planned
                  for s in e.variables(plan.layout)}
        assert not others & set(names), "a variable name is taken by another extension"

    def test_store_attributes_are_strings(self, planned: StepExtension) -> None:
        attrs = planned.store_attrs()
        assert all(isinstance(k, str) and isinstance(v, str) for k, v in attrs.items()), attrs

    def test_preflight_accepts_the_plan(self, planned: StepExtension, plan) -> None:
        planned.preflight(plan)  # it ran once in plan_audit; again it raises nothing

    def test_survives_the_trip_to_a_worker(self, planned: StepExtension, plan) -> None:
        copy = roundtrip(planned)
        assert type(copy) is type(planned) and copy.name == planned.name
        assert list(copy.variables(plan.layout)) == list(planned.variables(plan.layout))
        assert dict(copy.store_attrs()) == dict(planned.store_attrs())

    # ------------------------------------------------------------------ a real audit
    def test_the_store_holds_what_on_step_returned(self, plan, planned: StepExtension) -> None:
        import xarray as xr

        from flq_audit import api

        recording = _Recording(planned)
        plan = dataclasses.replace(plan, extensions=tuple(
            recording if ext is planned else ext for ext in plan.extensions))
        result = api.run_audit(plan)
        assert not result.failed, result.failed
        assert sorted(recording.returned) == [ref.step for ref in plan.refs]
        specs = {spec.name: spec for spec in planned.variables(plan.layout)}
        with xr.open_zarr(str(plan.store), consolidated=False, mask_and_scale=False) as ds:
            for key, value in planned.store_attrs().items():
                assert ds.attrs[key] == value, key
            for name, spec in specs.items():
                assert ds[name].dims == spec.dims and ds[name].dtype == np.dtype(spec.dtype)
                assert ds[name].attrs.get("long_name") == spec.attrs["long_name"]
            for step, values in recording.returned.items():
                assert set(values) <= set(specs), f"step {step}: undeclared {set(values) - set(specs)}"
                for name, spec in specs.items():
                    stored = ds[name].sel(step=step).values
                    _assert_stored(stored, values.get(name), spec, f"{name} at step {step}")
        api.run_audit(plan)  # a resumed audit finds every step done: on_step is not called
        assert sorted(recording.returned) == [ref.step for ref in plan.refs]


def _assert_stored(stored: np.ndarray, value: np.ndarray | None, spec: VariableSpec,
                   what: str) -> None:
    """``value`` in the leading corner of ``stored``, the fill everywhere else."""
    expected = np.full(stored.shape, spec.fill, dtype=stored.dtype)
    if value is not None:
        value = np.asarray(value)
        assert value.ndim == stored.ndim and all(
            a <= b for a, b in zip(value.shape, stored.shape, strict=True)), (what, value.shape)
        expected[tuple(slice(0, n) for n in value.shape)] = value.astype(stored.dtype)
    np.testing.assert_array_equal(stored, expected, err_msg=what)


__all__ = ["CORE_NAMES", "REPLAY_OUTPUTS", "STORE_DIMS", "ExtensionTests"]


