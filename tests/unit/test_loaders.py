"""The model loaders: one compute dtype, a model per step, a worker copy, a training copy."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from flq_audit.audit.loaders import (
    ModelLoader,
    ModuleLoader,
    TransformersLoader,
    WeightsLoader,
    compute_dtype,
    model_loader,
)
from flq_audit.audit.prefetch import Fetched
from flq_audit.errors import ModelBuildError
from flq_audit.models import build_from_spec
from flq_audit.options import RunOptions
from flq_audit.sources import open_source

SPEC = {"type": "mlp", "in_features": 3, "widths": [5], "out_features": 2,
        "activation": "tanh", "bias": True}


@pytest.fixture
def run(tmp_path: Path) -> Path:
    """One float64 checkpoint whose values are not float32 numbers, and its spec."""
    torch.manual_seed(1)
    state = {k: v.detach().double().contiguous() + 1e-9
             for k, v in build_from_spec(SPEC).state_dict().items()}
    save_file(state, str(tmp_path / "step_4.safetensors"))
    (tmp_path / "model_spec.json").write_text(json.dumps(SPEC))
    return tmp_path


def _fetched(loader: ModelLoader, folder: Path) -> Fetched:
    source = open_source(str(folder))
    ref = source.list_refs()[0]
    fetched = Fetched(ref, paths=source.fetch(ref))
    loader.read(source, fetched, RunOptions())
    return fetched


def _snapshot(module: torch.nn.Module) -> list[tuple]:
    return [(k, v.dtype, v.data_ptr(), v._version, v.detach().clone())
            for k, v in module.state_dict(keep_vars=True).items()] + [
        (n, m.training) for n, m in module.named_modules()]


def _same(a: list[tuple], b: list[tuple]) -> bool:
    return len(a) == len(b) and all(
        x[:-1] == y[:-1] and (not isinstance(x[-1], torch.Tensor) or torch.equal(x[-1], y[-1]))
        for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize(("activation", "expected"), [
    ("float64", torch.float64), ("float32", torch.float32), ("float16", torch.float32)])
def test_the_activation_dtype_decides_the_compute_dtype(activation, expected):
    assert compute_dtype(activation) == expected


def test_float64_module_loader_loads_each_step_unrounded_into_its_own_copy(run):
    loader = model_loader(str(run / "model_spec.json"), None, activation_dtype="float64")
    assert isinstance(loader, ModuleLoader) and loader.kind == "module"
    template = loader.model()
    assert {p.dtype for p in template.module.parameters()} == {torch.float64}
    before = _snapshot(template.module)
    step = loader.load(_fetched(loader, run))
    assert step.built is not None and step.built.module is not template.module
    stored = load_file(str(run / "step_4.safetensors"))
    for key, value in step.built.module.state_dict().items():
        assert value.dtype == torch.float64
        assert torch.equal(value, stored[key])  # bit for bit: no float32 rounding
    assert _same(before, _snapshot(template.module))


def test_float32_module_loader_rounds_into_a_float32_copy(run):
    loader = model_loader(str(run / "model_spec.json"), None, activation_dtype="float32")
    step = loader.load(_fetched(loader, run))
    assert step.built is not None
    weight = step.built.module.state_dict()["layers.0.weight"]
    assert weight.dtype == torch.float32
    assert torch.equal(weight, step.state["layers.0.weight"].float())


def test_training_copy_is_float64_train_mode_and_leaves_the_step_model_alone(run):
    loader = model_loader(str(run / "model_spec.json"), None, activation_dtype="float32")
    step = loader.load(_fetched(loader, run))
    assert step.built is not None
    before = _snapshot(step.built.module)
    work = loader.training_copy(step.built, step.state)
    assert work is not step.built.module and work.training
    assert {p.dtype for p in work.parameters()} == {torch.float64}
    np.testing.assert_array_equal(work.state_dict()["layers.0.weight"].numpy(),
                                  step.state["layers.0.weight"].numpy())  # float64, unrounded
    assert _same(before, _snapshot(step.built.module))


def test_worker_copy_travels_without_weights_and_is_rebuilt(run):
    loader = model_loader(str(run / "model_spec.json"), None, activation_dtype="float64")
    shipped = pickle.loads(pickle.dumps(loader.for_worker()))
    assert shipped.template is None
    with pytest.raises(ModelBuildError, match="holds no model"):
        shipped.load(_fetched(shipped, run))
    rebuilt = shipped.rebuilt()
    assert rebuilt.template is not None and rebuilt.dtype == torch.float64
    assert {p.dtype for p in rebuilt.template.module.parameters()} == {torch.float64}
    assert rebuilt.load(_fetched(rebuilt, run)).built is not None


def test_weights_loader_has_no_model(run):
    loader = WeightsLoader()
    step = loader.load(_fetched(loader, run))
    assert step.built is None and set(step.state) == {
        "layers.0.weight", "layers.0.bias", "layers.1.weight", "layers.1.bias"}
    assert loader.kind == "weights" and not loader.residual_stream
    with pytest.raises(ModelBuildError):
        loader.model()
    assert pickle.loads(pickle.dumps(loader.for_worker())).rebuilt() == loader


def test_capabilities_replace_origin_strings():
    assert ModuleLoader.class_scores and not ModuleLoader.residual_stream
    assert TransformersLoader.residual_stream and not TransformersLoader.class_scores
    with pytest.raises(ModelBuildError, match="--model hf needs checkpoint folders"):
        model_loader("hf", None, activation_dtype="float32")


def test_replay_dtype_resolution_order() -> None:
    from flq_audit.audit.loaders import resolve_replay_dtype
    from flq_audit.errors import OptionError

    assert resolve_replay_dtype("float32") is torch.float32
    assert resolve_replay_dtype("float64") is torch.float64
    assert resolve_replay_dtype("float32", checkpoint_dtype=torch.bfloat16) is torch.bfloat16
    assert resolve_replay_dtype("float64", checkpoint_dtype=torch.bfloat16) is torch.float64
    assert resolve_replay_dtype("float16", "bfloat16", torch.float32) is torch.bfloat16
    assert resolve_replay_dtype("float64", "float64") is torch.float64
    with pytest.raises(OptionError, match=r"--dtype bfloat16.*--activation-dtype float64"):
        resolve_replay_dtype("float64", "bfloat16")


def test_holds_exactly_and_the_config_dtype(tmp_path: Path) -> None:
    from flq_audit.audit.file_tensors import config_dtype, holds_exactly

    assert holds_exactly(torch.float32, torch.bfloat16) and holds_exactly(torch.float64, torch.float32)
    assert not holds_exactly(torch.bfloat16, torch.float32)
    assert not holds_exactly(torch.float16, torch.bfloat16) and holds_exactly(torch.float16, torch.int64)
    for config, expected in (({"dtype": "bfloat16"}, torch.bfloat16),
                             ({"torch_dtype": "float16"}, torch.float16),
                             ({"dtype": "int8"}, None), ({}, None)):
        (tmp_path / "config.json").write_text(json.dumps(config))
        assert config_dtype(tmp_path) == expected, config
    assert config_dtype(tmp_path / "absent") is None and config_dtype(None) is None


def test_a_module_loader_replays_in_dtype_and_records_only_a_new_one(run: Path) -> None:
    from flq_audit.audit.loaders import replay_config

    spec = str(run / "model_spec.json")
    assert replay_config(model_loader(spec, None, activation_dtype="float32")) == {}
    assert replay_config(model_loader(spec, None, activation_dtype="float32",
                                      replay_dtype="float32")) == {}  # the legacy replay
    assert replay_config(model_loader(spec, None, activation_dtype="float64")) == {}
    loader = model_loader(spec, None, activation_dtype="float32", replay_dtype="bfloat16")
    assert replay_config(loader) == {"replay_dtype": "bfloat16"}
    rebuilt = pickle.loads(pickle.dumps(loader.for_worker())).rebuilt()
    step = rebuilt.load(_fetched(rebuilt, run))
    assert step.built is not None and rebuilt.dtype == torch.bfloat16
    assert {p.dtype for p in step.built.module.parameters()} == {torch.bfloat16}
    stored = load_file(str(run / "step_4.safetensors"))  # the state keeps the file's values
    assert torch.equal(step.state["layers.0.weight"].double(), stored["layers.0.weight"])


def _neox(tmp_path: Path) -> Path:
    pytest.importorskip("transformers")
    from tests._helpers.hf_models import trainer_run

    return trainer_run(tmp_path / "hf", "neox", steps=(0, 10))


def test_a_half_transformers_replay_reads_the_grams_weights_from_the_files(tmp_path: Path) -> None:
    from flq_audit.audit.file_tensors import FileTensors

    run = _neox(tmp_path)
    folder = run / "checkpoint-0"
    stored = load_file(str(folder / "model.safetensors"))
    for replay, holds_files in (("bfloat16", True), ("float32", False)):
        loader = model_loader("hf", folder, activation_dtype="float32", replay_dtype=replay)
        fetched = _fetched(loader, run)
        assert isinstance(fetched.state, FileTensors) is holds_files
        step = loader.load(fetched)
        assert step.built is not None
        assert next(step.built.module.parameters()).dtype == getattr(torch, replay)
    weights = step.state if holds_files else FileTensors(folder, step.built.module, step=0)
    # transformers renames embed_out. to lm_head. when it loads GPT-NeoX
    assert "lm_head.weight" in weights and "embed_out.weight" not in weights
    bf16 = _fetched(model_loader("hf", folder, activation_dtype="float32",
                                 replay_dtype="bfloat16"), run).state
    assert torch.equal(bf16["lm_head.weight"], stored["embed_out.weight"])
    assert bf16["lm_head.weight"].dtype == torch.float32
    assert bf16.get("no.such.weight") is None and len(bf16) == len(stored)


def test_file_tensors_refuse_a_tensor_that_is_not_the_loaded_weight(tmp_path: Path) -> None:
    from flq_audit.audit.file_tensors import FileTensors
    from flq_audit.models.hf import load_hf_checkpoint

    run = _neox(tmp_path)
    other = load_hf_checkpoint(run / "checkpoint-10", dtype=torch.bfloat16).module
    tensors = FileTensors(run / "checkpoint-0", other, step=0)  # step 10's model, step 0's files
    with pytest.raises(ModelBuildError, match=r"step 0: tensor 'embed_out.weight' .* 'lm_head.weight'"):
        tensors["lm_head.weight"]


def test_the_transformers_template_is_its_folders_checkpoint_and_else_random(tmp_path: Path) -> None:
    run = _neox(tmp_path)
    folder = run / "checkpoint-10"
    stored = load_file(str(folder / "model.safetensors"))  # the files, read independently
    template = TransformersLoader.create(folder, "float32").model()
    params = dict(template.module.named_parameters())
    # transformers renames embed_out. to lm_head. when it loads GPT-NeoX
    assert torch.equal(params["lm_head.weight"], stored["embed_out.weight"])
    assert all(torch.equal(params[k], v) for k, v in stored.items() if k in params)
    assert template.origin == "hf:GPTNeoXForCausalLM"
    bare = tmp_path / "config-only"  # a folder without weights: the architecture, random
    bare.mkdir()
    (bare / "config.json").write_bytes((folder / "config.json").read_bytes())
    random = TransformersLoader.create(bare, "float32").model()
    shapes = {k: tuple(p.shape) for k, p in random.module.named_parameters()}
    assert shapes == {k: tuple(p.shape) for k, p in params.items()}
    assert not torch.equal(dict(random.module.named_parameters())["lm_head.weight"],
                           params["lm_head.weight"])
    (folder.parent / "broken").mkdir()  # weights that do not load: the random one again
    broken = folder.parent / "broken"
    (broken / "config.json").write_bytes((folder / "config.json").read_bytes())
    (broken / "model.safetensors").write_bytes(b"\0" * 64)
    assert TransformersLoader.create(broken, "float32").model().origin == "hf:GPTNeoXForCausalLM"
