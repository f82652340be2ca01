"""Revision-name parsers (Pythia, OLMo, OLMo 2, Amber, Crystal, CRFM, step_N, custom) and the step axis."""

from __future__ import annotations

import pytest

from flq_audit.errors import StepSelectionError
from flq_audit.sources.revisions import (
    RevisionInfo,
    assign_steps,
    compile_revision_pattern,
    parse_revision,
)

B = 10**9


@pytest.mark.parametrize(
    ("name", "family", "step", "stage", "ingredient", "tokens"),
    [
        # EleutherAI/pythia-*: step0, the log grid, then every 1000
        ("step0", "pythia", 0, None, None, None),
        ("step1", "pythia", 1, None, None, None),
        ("step512", "pythia", 512, None, None, None),
        ("step143000", "pythia", 143000, None, None, None),
        # allenai/OLMo-1B-hf, OLMo-7B-0724-hf
        ("step1000-tokens4B", "olmo", 1000, None, None, 4 * B),
        ("step738020-tokens3095B", "olmo", 738020, None, None, 3095 * B),
        ("step1000-tokens2B", "olmo", 1000, None, None, 2 * B),
        # allenai/OLMo-2-*: stage 1 pretraining, stage 2 ingredients (soups)
        ("stage1-step0-tokens0B", "olmo2", 0, 1, None, 0),
        ("stage1-step928646-tokens3896B", "olmo2", 928646, 1, None, 3896 * B),
        ("stage2-ingredient1-step11931-tokens50B", "olmo2", 11931, 2, 1, 50 * B),
        ("stage2-ingredient3-step0-tokens0B", "olmo2", 0, 2, 3, 0),
        # OLMo 3 Think/RL and others
        ("step_200", "step_n", 200, None, None, None),
        # LLM360/Amber
        ("ckpt_000", "amber", 0, None, None, None),
        ("ckpt_358", "amber", 358, None, None, None),
        # LLM360/CrystalCoder: phases restart the step
        ("CrystalCoder_phase2_checkpoint_011000", "crystal", 11000, 2, None, None),
        # stanford-crfm/*-gpt2-small-x*
        ("checkpoint-10", "crfm", 10, None, None, None),
        ("checkpoint-400000", "crfm", 400000, None, None, None),
    ],
)
def test_builtin_families(name, family, step, stage, ingredient, tokens):
    info = parse_revision(name)
    assert info == RevisionInfo(name, family, step, stage, ingredient, tokens)


@pytest.mark.parametrize(
    "name",
    ["main", "v1.0", "refs/pr/1", "step", "stepX", "step1000-extra", "dev-step1000", "ckpt_final",
     "checkpoint-", "stage1-step10", "last-checkpoint"],
)
def test_non_checkpoint_names(name):
    assert parse_revision(name) is None


def test_tokens_units():
    assert parse_revision("step10-tokens5M").tokens == 5 * 10**6
    assert parse_revision("step10-tokens7").tokens == 7


def test_extra_holds_coordinates_as_strings():
    info = parse_revision("stage2-ingredient1-step50-tokens9B")
    assert info.extra() == {
        "family": "olmo2", "raw_step": "50", "stage": "2", "ingredient": "1", "tokens": str(9 * B),
    }
    assert parse_revision("step3").extra() == {"family": "pythia", "raw_step": "3"}


def test_custom_pattern_replaces_builtins():
    pattern = r"run(?P<stage>\d)-iter(?P<step>\d+)"
    info = parse_revision("run2-iter0050", pattern)
    assert (info.family, info.step, info.stage) == ("custom", 50, 2)
    assert parse_revision("step1000", pattern) is None  # built-ins are off
    assert parse_revision("run2-iter0050-old", pattern) is None  # whole-name match
    assert parse_revision("x-7-tokens3B", r"x-(?P<step>\d+)-tokens(?P<tokens>\d+)(?P<unit>B)").tokens == 3 * B


@pytest.mark.parametrize(("pattern", "says"), [(r"iter-(\d+)", "no named group 'step'"),
                                               (r"iter-(?P<step>\d+", "not a valid regular")])
def test_bad_custom_pattern(pattern, says):
    with pytest.raises(StepSelectionError, match=says):
        compile_revision_pattern(pattern)


def test_single_track_keeps_raw_steps():
    infos = [parse_revision(n) for n in ["step2000", "step0", "step1000"]]
    assert assign_steps(infos) == [2000, 0, 1000]


def test_olmo2_stages_laid_end_to_end():
    names = [
        "stage1-step0-tokens0B", "stage1-step1000-tokens5B", "stage1-step2000-tokens9B",
        "stage2-ingredient1-step0-tokens0B", "stage2-ingredient1-step100-tokens1B",
        "stage2-ingredient2-step0-tokens0B", "stage2-ingredient2-step100-tokens1B",
    ]
    infos = [parse_revision(n) for n in names]
    steps = assign_steps(infos)
    assert steps == [0, 1000, 2000, 2001, 2101, 2102, 2202]
    assert len(set(steps)) == len(steps)
    # the global order equals training order (stage, ingredient, step)
    assert sorted(names, key=lambda n: parse_revision(n).order_key()) == names


def test_one_stage_alone_keeps_its_steps():
    names = ["stage2-ingredient1-step0-tokens0B", "stage2-ingredient1-step70-tokens1B"]
    infos = [parse_revision(n) for n in names]
    assert assign_steps(infos) == [0, 70]


def test_clashing_names_are_refused():
    infos = [parse_revision("step1000"), parse_revision("step1000", r"step(?P<step>\d+)")]
    with pytest.raises(StepSelectionError, match="both give step 1000"):
        assign_steps(infos)
