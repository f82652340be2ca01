"""Every built-in per-step extension passes :class:`flq_audit.testing.ExtensionTests`, in the
audits that switch it on: non-finite flags (model and weights-only audits), class
predictions, the FL residual, and the residual stream of transformers models."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from flq_audit.audit.extensions.fl import FeatureLearningResidual
from flq_audit.audit.extensions.hidden_states import HiddenStates
from flq_audit.audit.extensions.nonfinite import NonFiniteWeights
from flq_audit.audit.extensions.predictions import ClassPredictions
from flq_audit.options import CaptureOptions, FLOptions, TextProbeOptions
from flq_audit.testing import ExtensionTests
from tests._helpers.runs import make_run


class TestNonFinite(ExtensionTests):
    built_in = True

    @pytest.fixture
    def extension(self) -> NonFiniteWeights:
        return NonFiniteWeights()


class TestNonFiniteWeightsOnly(TestNonFinite):
    @pytest.fixture
    def audit_kwargs(self, tmp_path: Path) -> dict[str, Any]:
        return {"source": str(make_run(tmp_path / "run")), "weights_only": True}


class TestPredictions(ExtensionTests):
    built_in = True

    @pytest.fixture
    def extension(self) -> ClassPredictions:
        return ClassPredictions("layers.2")

    def test_the_classifier_is_the_last_layer(self, planned) -> None:
        assert planned.store_attrs() == {"classifier": "layers.2"}


class TestFeatureLearningResidual(ExtensionTests):
    built_in = True

    @pytest.fixture
    def fl(self, sgd_run_64: Path) -> FLOptions:
        return FLOptions.from_files("ce", "0.1", str(sgd_run_64 / "fl_batches.json"))

    @pytest.fixture
    def extension(self, fl: FLOptions) -> FeatureLearningResidual:
        return FeatureLearningResidual(fl)

    @pytest.fixture
    def audit_kwargs(self, sgd_run_64: Path, fl: FLOptions) -> dict[str, Any]:
        return {"source": str(sgd_run_64), "steps": "0:3", "fl": fl}


class TestHiddenStates(ExtensionTests):
    built_in = True

    @pytest.fixture
    def extension(self) -> HiddenStates:
        return HiddenStates()

    @pytest.fixture
    def audit_kwargs(self, tmp_path: Path) -> dict[str, Any]:
        from tests._helpers.hf_models import trainer_run

        run = trainer_run(tmp_path / "run", "neox", steps=(0,))
        return {"source": str(run), "probe": str(run / "probe.jsonl"),
                "text": TextProbeOptions(pooling="mean"),
                "capture": CaptureOptions(layers=("lm_head",), hidden_states=True)}
