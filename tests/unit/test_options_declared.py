"""Options declared once: the choice enums, the store fingerprint derived from the options'
fields, the option parsers at the CLI, and the moved or renamed names."""

from __future__ import annotations

import dataclasses
import typing
import warnings
from pathlib import Path

import pytest

from flq_audit.audit.extensions.fl_inputs import FLLossChoice, FLOptions
from flq_audit.cli._options import DenominatorChoice
from flq_audit.errors import OptionError
from flq_audit.metrics import TLOptions
from flq_audit.options import (
    FINGERPRINT,
    ActivationDtypeChoice,
    CacheChoice,
    CaptureOptions,
    GramDtypeChoice,
    PoolingChoice,
    SourceOptions,
    TaskChoice,
    TextProbeOptions,
    fingerprint_of,
)
from tests._helpers.cli import assert_says, cli_env, describe, invoke, run_cli

#: (options class, field, the enum the CLI offers for it)
CHOICE_FIELDS = [
    (CaptureOptions, "activation_dtype", ActivationDtypeChoice),
    (CaptureOptions, "gram_dtype", GramDtypeChoice),
    (TextProbeOptions, "task", TaskChoice),
    (TextProbeOptions, "pooling", PoolingChoice),
    (SourceOptions, "cache", CacheChoice),
    (FLOptions, "loss", FLLossChoice),
    (TLOptions, "denominator", DenominatorChoice),
]
FINGERPRINTED = [CaptureOptions, TextProbeOptions, FLOptions]


def _literal_values(annotation: object) -> list[str]:
    if typing.get_origin(annotation) is typing.Literal:
        return [a for a in typing.get_args(annotation) if isinstance(a, str)]
    return [v for a in typing.get_args(annotation) for v in _literal_values(a)]


@pytest.mark.parametrize(("options", "name", "choice"), CHOICE_FIELDS)
def test_each_choice_enum_offers_exactly_the_values_its_field_allows(options, name, choice):
    hint = typing.get_type_hints(options)[name]
    assert [member.value for member in choice] == _literal_values(hint)


def test_the_format_choices_are_the_output_formats():
    from flq_audit.cli._output import FormatChoice, OutputFormat

    assert [member.value for member in FormatChoice] == _literal_values(OutputFormat)


def test_a_choice_member_is_stored_as_its_plain_value():
    capture = CaptureOptions(activation_dtype=ActivationDtypeChoice.float16)
    assert type(capture.activation_dtype) is str and capture.activation_dtype == "float16"
    assert str(TaskChoice.next_token) == f"{TaskChoice.next_token}" == "next-token"
    text = TextProbeOptions(task=TaskChoice.next_token, pooling=PoolingChoice.mean)
    assert (type(text.task), type(text.pooling)) == (str, str)


@pytest.mark.parametrize("options", FINGERPRINTED, ids=lambda c: c.__name__)
def test_every_field_says_whether_it_is_in_the_store_fingerprint(options):
    for spec in dataclasses.fields(options):
        how = spec.metadata.get(FINGERPRINT)
        assert how in ("always", "when set", "no"), (options.__name__, spec.name)
        if how == "no":
            assert spec.metadata.get("reason"), (options.__name__, spec.name)


def test_the_capture_fingerprint_holds_what_decides_what_is_stored():
    assert fingerprint_of(CaptureOptions(layers=("fc*",))) == {
        "activation_dtype": "float32", "gram_dtype": "float32", "max_samples": None}
    assert fingerprint_of(CaptureOptions(max_samples=7, hidden_states=True)) == {
        "activation_dtype": "float32", "gram_dtype": "float32", "max_samples": 7,
        "hidden_states": True}
    assert fingerprint_of(FLOptions(loss="mse", lr={3: 0.5}, batches={3: (1, 2)},
                                    batches_file="b.json")) == {
        "loss": "mse", "lr": {"3": 0.5}, "batches": {"3": 2}}


def _with_option(name: str, default: object, **metadata: object) -> type:
    """CaptureOptions with one more field, as a later release may add it."""
    spec = dataclasses.field(default=default, metadata=metadata or None)
    return dataclasses.make_dataclass(f"CaptureWith_{name}", [(name, type(default), spec)],
                                      bases=(CaptureOptions,), frozen=True, kw_only=True)


def test_an_option_added_to_capture_options_enters_the_fingerprint_without_a_marker():
    from flq_audit.audit.plan import capture_config

    extended = _with_option("smoothing", 0.0)
    at_default = capture_config("spec.json", [], extended())
    assert at_default == capture_config("spec.json", [], CaptureOptions())  # old stores resume
    set_once, set_twice = (capture_config("spec.json", [], extended(smoothing=s))
                           for s in (0.25, 0.5))
    assert set_once["smoothing"] == 0.25 and set_twice["smoothing"] == 0.5
    marked_out = _with_option("smoothing", 0.0, fingerprint="no", reason="a test")
    assert "smoothing" not in capture_config("spec.json", [], marked_out(smoothing=0.25))


def test_a_resume_with_another_value_of_an_added_capture_option_is_refused(run_dir, tmp_path):
    from flq_audit import api
    from flq_audit.errors import StoreMismatchError

    extended = _with_option("smoothing", 0.0)
    store = tmp_path / "s.zarr"
    api.audit(str(run_dir), steps="first", out=store, capture=extended(smoothing=0.25))
    plan = api.plan_audit(str(run_dir), steps="first", out=store,
                          capture=extended(smoothing=0.25))
    assert plan.store_status == "resume"
    plan = api.plan_audit(str(run_dir), steps="first", out=store,
                          capture=extended(smoothing=0.5))
    assert plan.store_status == "refused"
    assert isinstance(plan.store_refusal, StoreMismatchError)
    assert_says(str(plan.store_refusal), "capture_config.smoothing: stored 0.25, now 0.5")


def test_hub_options_is_a_deprecated_name_of_source_options():
    import flq_audit.api
    import flq_audit.options

    for module in (flq_audit.options, flq_audit.api):
        with pytest.warns(DeprecationWarning, match="HubOptions is deprecated: use SourceOptions"):
            assert module.HubOptions is SourceOptions


def test_fl_options_keep_their_old_import_path_without_a_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        from flq_audit.options import FLOptions as old

    assert old is FLOptions


def test_probe_keys_have_one_parser():
    import flq_audit.options
    from flq_audit.cli._options import probe_keys_value
    from flq_audit.options import RunOptions
    from flq_audit.probes import parse_probe_keys

    assert flq_audit.options.parse_probe_keys is parse_probe_keys
    assert probe_keys_value(" x , y ") == ("x", "y")
    assert RunOptions(probe_keys="x,y").probe_keys == ("x", "y")  # type: ignore[arg-type]
    assert FLOptions.from_files("ce", "0.1", "full", probe_keys="x,y").probe_keys == ("x", "y")
    for bad in ("x", "x,y,z", ",y"):
        with pytest.raises(OptionError, match="--probe-keys must name two arrays"):
            RunOptions(probe_keys=bad)  # type: ignore[arg-type]


def test_storage_options_are_parsed_by_the_option():
    import typer

    from flq_audit.cli._options import storage_options_value

    assert storage_options_value('{"anon": true, "client_kwargs": {}}') == {
        "anon": True, "client_kwargs": {}}
    with pytest.raises(typer.BadParameter, match="must be a JSON object, got list"):
        storage_options_value("[1]")


@pytest.mark.parametrize("command", ["audit", "show", "metrics", "report"])
def test_a_bad_storage_options_value_is_a_usage_error_before_the_command_runs(command, tmp_path):
    target = tmp_path / "missing"  # the command itself would report it missing (exit 3)
    result = invoke(command, target, "--storage-options", "[1, 2]")
    assert result.exit_code == 2, describe(result)
    assert_says(result.stderr, "Invalid value for '--storage-options'",
                "must be a JSON object, got list")
    assert not target.exists()


def test_the_cli_seam_needs_no_type_ignore():
    cli = Path(__file__).resolve().parents[2] / "flq_audit" / "cli"
    for name in ("_audit.py", "_options.py"):
        assert "type: ignore" not in (cli / name).read_text(), name


@pytest.mark.parametrize(("words", "offered"), [
    ("flq-audit audit run --fl-loss ", ["ce", "mse"]),
    ("flq-audit audit run --activation-dtype float", ["float32", "float16", "float64"]),
    ("flq-audit audit run --task ", ["sequence", "token", "next-token"]),
])
def test_every_choice_option_completes_its_values(words, offered):
    parts = words.split(" ")
    asked = run_cli(env=cli_env(_FLQ_AUDIT_COMPLETE="complete_bash", COMP_WORDS=words,
                                COMP_CWORD=str(len(parts) - 1)))
    assert asked.returncode == 0, describe(asked)
    assert asked.stdout.split() == offered
