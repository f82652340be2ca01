"""Run tags: parsed from ``--tag KEY=VALUE``, kept in the store, merged by later audits."""

from __future__ import annotations

import json

import pytest
import zarr

from flq_audit import api
from flq_audit._tags import parse_tag, tag_pairs
from flq_audit.errors import OptionError
from tests._helpers.cli import invoke


@pytest.mark.parametrize(("text", "expected"), [
    ("weight_decay=0.5", ("weight_decay", 0.5)), ("seed=3", ("seed", 3)),
    ("opt=adamw", ("opt", "adamw")), ("wide=true", ("wide", True)),
    ("lr=1e-3", ("lr", 0.001)), ("note=a=b", ("note", "a=b")), ("x=nan", ("x", "nan")),
    ("x=[1,2]", ("x", "[1,2]")), ("x=", ("x", "")),
])
def test_a_value_is_a_number_or_boolean_when_it_reads_as_one(text, expected) -> None:
    assert parse_tag(text) == expected


@pytest.mark.parametrize(("text", "message"), [
    ("noequals", "KEY=VALUE"), ("1x=3", "identifier"), ("_x=3", "identifier"),
    ("run=1", "reserved"), ("step=1", "reserved"), ("a b=1", "identifier"),
])
def test_a_bad_tag_is_refused_with_the_reason(text, message) -> None:
    with pytest.raises(OptionError, match=message):
        parse_tag(text)


def test_mapping_values_are_checked() -> None:
    assert tag_pairs({"b": 1, "a": "x"}) == (("a", "x"), ("b", 1))
    with pytest.raises(OptionError, match="finite"):
        tag_pairs({"a": float("inf")})
    with pytest.raises(OptionError, match="text, a number or a boolean"):
        tag_pairs({"a": [1, 2]})


def _tags(store) -> dict:
    return json.loads(zarr.open_group(str(store), mode="r").attrs["tags"])


def test_tags_are_stored_and_a_later_audit_merges_its_own(run_dir, tmp_path) -> None:
    store = tmp_path / "s.zarr"
    api.audit(str(run_dir), out=store, steps="0", tags={"weight_decay": 0.5, "opt": "sgd"})
    assert _tags(store) == {"weight_decay": 0.5, "opt": "sgd"}
    assert api.open_store(store).attrs["tags"] == json.dumps(_tags(store), sort_keys=True)
    api.audit(str(run_dir), out=store, tags={"seed": 3, "opt": "adamw"})  # resumes, adds steps
    assert _tags(store) == {"weight_decay": 0.5, "opt": "adamw", "seed": 3}
    api.audit(str(run_dir), out=store)  # nothing to do, no tags: the tags stay
    assert _tags(store) == {"weight_decay": 0.5, "opt": "adamw", "seed": 3}
    assert api.store_summary(store).tags == _tags(store)  # what show prints
    assert api.open_store(store).flq.summary().tags == _tags(store)
    shown = invoke("show", store)
    assert "tags    opt=adamw, seed=3, weight_decay=0.5" in shown.output


def test_cli_tag_option(run_dir, tmp_path) -> None:
    store = tmp_path / "c.zarr"
    result = invoke("audit", run_dir, "--out", store, "--tag", "weight_decay=0.25", "--tag", "seed=1", "-q")
    assert result.exit_code == 0, result.output
    assert _tags(store) == {"weight_decay": 0.25, "seed": 1}
    bad = invoke("audit", run_dir, "--out", tmp_path / "d.zarr", "--tag", "layer=3")
    assert bad.exit_code == 2 and "reserved" in bad.output
    assert not (tmp_path / "d.zarr").exists()  # refused before anything is written
