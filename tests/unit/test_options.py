"""Typed options: frozen, keyword-only, validated on construction with the allowed values."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from flq_audit.errors import OptionError, ProbeError
from flq_audit.options import (
    CaptureOptions,
    FLOptions,
    RunOptions,
    SourceOptions,
    TextProbeOptions,
)


@pytest.mark.parametrize(("make", "message"), [
    (lambda: CaptureOptions(activation_dtype="bfloat16"),
     r"--activation-dtype \(activation_dtype\) must be one of float32, float16, float64; "
     r"got 'bfloat16'"),
    (lambda: CaptureOptions(gram_dtype="float16"), r"one of float32, float64; got 'float16'"),
    (lambda: CaptureOptions(max_samples=0), r"--max-samples \(max_samples\) must be an integer >= 1"),
    (lambda: RunOptions(batch_size=0), r"--batch-size \(batch_size\) must be an integer >= 1"),
    (lambda: RunOptions(device="tpu"), r"one of auto, cpu, cuda, cuda:N; got 'tpu'"),
    (lambda: SourceOptions(cache="forget"), r"--cache \(cache\) must be one of keep, drop"),
    (lambda: SourceOptions(template_steps=("a",)), r"--template-steps .* must be integers"),
    (lambda: TextProbeOptions(task="words"), r"one of sequence, token, next-token; got 'words'"),
    (lambda: TextProbeOptions(pooling="max"), r"one of cls, last, mean; got 'max'"),
    (lambda: TextProbeOptions(max_length=0), r"--max-length \(max_length\)"),
    (lambda: FLOptions(loss="hinge", lr=0.1), r"--fl-loss \(loss\) must be one of ce, mse"),
    (lambda: FLOptions(loss="ce", lr=-1.0), r"--fl-lr \(lr\) must be positive and finite"),
    (lambda: FLOptions(loss="ce", lr=0.1, batches="half"), r"--fl-batches \(batches\)"),
])
def test_bad_values_are_usage_errors_naming_the_allowed_values(make, message):
    with pytest.raises(OptionError, match=message) as caught:
        make()
    assert isinstance(caught.value, ValueError)  # exit 2 on the command line


def test_options_are_frozen_and_keyword_only():
    options = CaptureOptions(layers=("layers.*",))
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.max_samples = 3  # type: ignore[misc]
    with pytest.raises(TypeError):
        CaptureOptions(("layers.*",))  # type: ignore[misc]
    assert CaptureOptions(layers="fc").layers == ("fc",)  # one pattern, not its letters


def test_source_options_pass_only_what_is_set():
    assert SourceOptions().source_kwargs() == {}
    assert SourceOptions(cache="drop", template_steps=(20, 0), subfolders=True).source_kwargs() == {
        "cache": "drop", "template_steps": [20, 0], "subfolders": True}


def test_fl_options_from_files(tmp_path):
    lr, batches = tmp_path / "lr.json", tmp_path / "batches.json"
    lr.write_text(json.dumps({"0": 0.5, "10": 0.25}))
    batches.write_text(json.dumps({"batches": {"0": [3, 1], "10": [2]}}))
    options = FLOptions.from_files("mse", str(lr), str(batches))
    assert options.lr_at(10) == 0.25
    np.testing.assert_array_equal(options.batch_at(0, 5), [3, 1])
    assert options.to_json_dict() == {"loss": "mse", "lr": {"0": 0.5, "10": 0.25},
                                      "batches": {"0": 2, "10": 1}}
    full = FLOptions.from_files("ce", "0.1", "full")
    np.testing.assert_array_equal(full.batch_at(7, 4), np.arange(4))
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2]")
    with pytest.raises(ProbeError, match="must be a JSON object"):
        FLOptions.from_files("ce", str(bad), "full")


def test_options_import_no_torch():
    import subprocess
    import sys

    code = "import sys, flq_audit.options; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize(("flags", "message"), [
    (("--max-samples", "0"), "--max-samples"),
    (("--activation-dtype", "float8"),
     "Invalid value for '--activation-dtype': Value error, 'float8' is not one of 'float32', "
     "'float16', 'float64'"),
    (("--pooling", "max"), "'--pooling': Value error, 'max' is not one of 'cls', 'last', 'mean'"),
    (("--cache", "forget"), "'--cache': Value error, 'forget' is not one of 'keep', 'drop'"),
    (("--fl-loss", "hinge"), "'--fl-loss': Value error, 'hinge' is not one of 'ce', 'mse'"),
    (("--probe-keys", "x"), "Invalid value for '--probe-keys': --probe-keys must name two "
     "arrays, INPUTS,TARGETS; got 'x'"),
])
def test_the_command_line_reports_bad_options_as_usage_errors(run_dir, tmp_path, flags, message):
    from tests._helpers.cli import assert_says, describe, invoke

    result = invoke("audit", run_dir, "--out", tmp_path / "s.zarr", *flags)
    assert result.exit_code == 2, describe(result)
    assert_says(result.output, message)
    assert not (tmp_path / "s.zarr").exists()


@pytest.mark.parametrize("flag", ["--weights-only", "--no-probe"])
def test_weights_only_flag_matches_the_api_name(run_dir, flag):
    from tests._helpers.cli import describe, invoke

    result = invoke("audit", run_dir, flag, "--dry-run", "--json")
    assert result.exit_code == 0, describe(result)
    plan = json.loads(result.stdout)
    assert plan["probe"] is None and plan["capture_config"]["model"] == "none (weights only)"
