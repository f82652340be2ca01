"""Building models from JSON specs and factory files, and loading state dicts into them."""

from __future__ import annotations

import json
import textwrap

import pytest
import torch
from torch import nn

from flq_audit.errors import FlqAuditWarning, ModelBuildError
from flq_audit.models import MLP, BuiltModel, build_from_spec, build_model, load_weights

MLP_SPEC = {"type": "mlp", "in_features": 6, "widths": [8, 8], "out_features": 3,
            "activation": "gelu", "bias": True}
CNN_SPEC = {"type": "cnn", "in_channels": 1, "input_size": [8, 8], "channels": [4, 5],
            "kernel_sizes": [3, 3], "padding": [1, 1], "pool_after": [0],
            "activation": "relu", "num_classes": 10, "bias": True}


def _spec_file(tmp_path, spec, name="model_spec.json"):
    path = tmp_path / name
    path.write_text(json.dumps(spec))
    return str(path)


def _factory_file(tmp_path, body, name="nets.py"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(body))
    return path


# ------------------------------------------------------------------ JSON specs
def test_mlp_spec_module_names(tmp_path):
    built = build_model(_spec_file(tmp_path, MLP_SPEC))

    assert isinstance(built.module, MLP)
    assert built.key_mapper is None
    linear = [n for n, m in built.module.named_modules() if isinstance(m, nn.Linear)]
    assert linear == ["layers.0", "layers.1", "layers.2"]
    shapes = {k: tuple(v.shape) for k, v in built.module.state_dict().items()}
    assert shapes == {
        "layers.0.weight": (8, 6), "layers.0.bias": (8,),
        "layers.1.weight": (8, 8), "layers.1.bias": (8,),
        "layers.2.weight": (3, 8), "layers.2.bias": (3,),
    }
    assert isinstance(built.module.act, nn.GELU)
    assert built.module(torch.zeros(4, 6)).shape == (4, 3)


def test_cnn_spec_module_names(tmp_path):
    built = build_model(_spec_file(tmp_path, CNN_SPEC))
    module = built.module

    kinds = [(n, type(m).__name__) for n, m in module.features.named_children()]
    assert kinds == [("0", "Conv2d"), ("1", "ReLU"), ("2", "MaxPool2d"), ("3", "Conv2d"),
                     ("4", "ReLU")]
    assert sorted(module.state_dict()) == [
        "classifier.bias", "classifier.weight",
        "features.0.bias", "features.0.weight", "features.3.bias", "features.3.weight",
    ]
    # 8x8 -> pool -> 4x4 with 5 channels, padding keeps the size
    assert module.classifier.in_features == 5 * 4 * 4
    assert module.features[0].padding == (1, 1)
    # flat (N, 64) inputs are reshaped to (N, 1, 8, 8)
    assert module(torch.zeros(2, 64)).shape == (2, 10)


def test_spec_without_bias():
    module = build_from_spec({**MLP_SPEC, "bias": False})
    assert sorted(module.state_dict()) == ["layers.0.weight", "layers.1.weight", "layers.2.weight"]


def test_output_scale_multiplies_the_readout():
    torch.manual_seed(0)
    plain = build_from_spec({**MLP_SPEC, "bias": False})
    scaled = build_from_spec({**MLP_SPEC, "bias": False, "output_scale": 0.25})
    scaled.load_state_dict(plain.state_dict())
    x = torch.randn(5, 6)
    hidden = torch.nn.functional.gelu(torch.nn.functional.gelu(x @ plain.layers[0].weight.T)
                                      @ plain.layers[1].weight.T)
    expected = 0.25 * (hidden @ plain.layers[2].weight.T)
    torch.testing.assert_close(scaled(x), expected)
    assert sorted(scaled.state_dict()) == sorted(plain.state_dict())  # not a parameter
    assert build_from_spec(MLP_SPEC).output_scale == 1.0
    assert build_from_spec({**MLP_SPEC, "output_scale": 2}).output_scale == 2.0


@pytest.mark.parametrize("scale", ["0.5", True, None, [1.0]])
def test_output_scale_must_be_a_number(scale):
    with pytest.raises(ModelBuildError,
                       match=rf"output_scale must be a number, got .* \({type(scale).__name__}\)"):
        build_from_spec({**MLP_SPEC, "output_scale": scale})


def test_output_scale_must_be_finite():
    with pytest.raises(ModelBuildError, match="output_scale must be finite"):
        build_from_spec({**MLP_SPEC, "output_scale": float("nan")})


def test_spec_round_trip_loads_its_own_checkpoint(tmp_path):
    spec = _spec_file(tmp_path, MLP_SPEC)
    torch.manual_seed(1)
    state = {k: v.clone() for k, v in build_model(spec).module.state_dict().items()}
    torch.manual_seed(2)
    built = build_model(spec)

    loaded = load_weights(built, state, step=0)

    assert sorted(loaded) == sorted(state)
    for key, value in built.module.state_dict().items():
        assert torch.equal(value, state[key]), key


# ------------------------------------------------------------------ factories
FACTORY = """
    from torch import nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = nn.ModuleList([nn.Linear(4, 5), nn.Linear(5, 2)])

        def forward(self, x):
            return self.layers[1](self.layers[0](x).relu())

    def make():
        return Net()

    _NAMES = {"net.fc1": "layers.0", "net.fc2": "layers.1"}

    def map_checkpoint_key(key):
        prefix, _, leaf = key.rpartition(".")
        if prefix not in _NAMES:
            return None          # e.g. 'net.extra.weight' is dropped
        return _NAMES[prefix] + "." + leaf

    def not_a_model():
        return 42

    def broken():
        raise ValueError("boom")
"""


def test_factory_file_builds_and_maps_keys(tmp_path):
    path = _factory_file(tmp_path, FACTORY)
    built = build_model(f"{path}:make")

    assert type(built.module).__name__ == "Net"
    assert built.origin == f"{path}:make"
    assert built.key_mapper is not None
    assert built.key_mapper("net.fc1.weight") == "layers.0.weight"

    published = {
        "net.fc1.weight": torch.randn(5, 4), "net.fc1.bias": torch.randn(5),
        "net.fc2.weight": torch.randn(2, 5), "net.fc2.bias": torch.randn(2),
        "net.extra.weight": torch.randn(3, 3),
    }
    loaded = load_weights(built, published, step=3)

    assert sorted(loaded) == ["layers.0.bias", "layers.0.weight", "layers.1.bias", "layers.1.weight"]
    own = built.module.state_dict()
    assert torch.equal(own["layers.0.weight"], published["net.fc1.weight"])
    assert torch.equal(own["layers.1.bias"], published["net.fc2.bias"])


def test_factory_without_mapper_sees_raw_keys(tmp_path):
    path = _factory_file(tmp_path, """
        from torch import nn

        def make():
            return nn.Sequential(nn.Linear(2, 2))
    """)
    built = build_model(f"{path}:make")

    assert built.key_mapper is None
    with pytest.raises(ModelBuildError, match=r"missing keys \[0\.bias, 0\.weight\] \(2\)"):
        load_weights(built, {"net.fc1.weight": torch.ones(2, 2)}, step=0)


def test_factory_file_does_not_exist(tmp_path):
    missing = tmp_path / "nowhere.py"
    with pytest.raises(ModelBuildError, match=r"model factory file .*nowhere\.py.* does not exist"):
        build_model(f"{missing}:make")


@pytest.mark.parametrize(("source", "function", "message"), [
    (FACTORY, "not_a_model", r"returned int, expected torch\.nn\.Module"),
    (FACTORY, "nope", r"has no function 'nope'; it defines \[.*'make'"),
    (FACTORY, "broken", r"raised ValueError\('boom'\)"),
    ("def make(:\n", "make", r"importing .*nets\.py.* raised SyntaxError"),
], ids=["returns-a-non-module", "function-missing", "raises", "syntax-error"])
def test_factory_that_fails_is_named_with_the_reason(tmp_path, source, function, message):
    path = _factory_file(tmp_path, source)
    with pytest.raises(ModelBuildError, match=message):
        build_model(f"{path}:{function}")


def test_factory_module_that_cannot_be_imported():
    with pytest.raises(ModelBuildError, match=r"cannot import 'no_such_pkg_xyz\.models'"):
        build_model("no_such_pkg_xyz.models:make")


def test_factory_from_an_importable_module():
    built = build_model("torch.nn:Identity")
    assert isinstance(built.module, nn.Identity)


# ------------------------------------------------------------------ load_weights errors
def _mlp() -> BuiltModel:
    return BuiltModel(build_from_spec(MLP_SPEC), origin="spec.json")


def _mlp_state() -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in build_from_spec(MLP_SPEC).state_dict().items()}


def test_missing_keys_are_listed():
    state = _mlp_state()
    del state["layers.2.bias"], state["layers.0.weight"]

    with pytest.raises(
        ModelBuildError,
        match=r"step 5: .*'spec\.json'.*missing keys \[layers\.0\.weight, layers\.2\.bias\] \(2\)",
    ) as info:
        load_weights(_mlp(), state, step=5)
    assert "unexpected" not in info.value.message
    assert info.value.step == 5


def test_unexpected_keys_are_listed():
    state = _mlp_state()
    state["head.weight"] = torch.ones(2, 2)

    with pytest.raises(ModelBuildError, match=r"unexpected keys \[head\.weight\] \(1\)") as info:
        load_weights(_mlp(), state, step=1)
    assert "missing" not in info.value.message


def test_missing_and_unexpected_together():
    state = _mlp_state()
    state["encoder.layers.2.bias"] = state.pop("layers.2.bias")

    with pytest.raises(
        ModelBuildError,
        match=r"missing keys \[layers\.2\.bias\] \(1\); unexpected keys \[encoder\.layers\.2\.bias\]",
    ):
        load_weights(_mlp(), state, step=1)


def test_many_missing_keys_are_shortened():
    built = BuiltModel(nn.Sequential(*[nn.Linear(1, 1) for _ in range(6)]), origin="seq")
    with pytest.raises(ModelBuildError, match=r", \.\.\.\] \(12\)"):
        load_weights(built, {}, step=0)


def test_shape_mismatch_is_reported():
    state = _mlp_state()
    state["layers.0.weight"] = torch.zeros(8, 5)

    with pytest.raises(
        ModelBuildError,
        match=r"shapes differ.*layers\.0\.weight: checkpoint \(8, 5\) vs model \(8, 6\)",
    ):
        load_weights(_mlp(), state, step=2)


class _WithBuffers(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 4)
        self.bn = nn.BatchNorm1d(4)
        self.register_buffer("mask", torch.ones(4), persistent=False)

    def forward(self, x):
        return self.bn(self.fc(x)) * self.mask


def test_batchnorm_and_non_persistent_buffer_load():
    torch.manual_seed(0)
    trained = _WithBuffers()
    trained.train()
    trained(torch.randn(16, 3))  # updates running stats and num_batches_tracked
    state = {k: v.clone() for k, v in trained.state_dict().items()}
    assert "mask" not in state
    assert int(state["bn.num_batches_tracked"]) == 1

    built = BuiltModel(_WithBuffers(), origin="with_buffers")
    loaded = load_weights(built, state, step=0)

    own = built.module.state_dict()
    assert torch.equal(own["bn.running_mean"], state["bn.running_mean"])
    assert torch.equal(own["fc.weight"], state["fc.weight"])
    assert set(loaded) == set(state)
    built.module.eval()
    trained.eval()
    x = torch.randn(5, 3)
    assert torch.equal(built.module(x), trained(x))


def test_checkpoint_without_num_batches_tracked_loads():
    state = {k: v.clone() for k, v in _WithBuffers().state_dict().items()
             if not k.endswith("num_batches_tracked")}
    built = BuiltModel(_WithBuffers(), origin="m")
    loaded = load_weights(built, state, step=0)
    assert "bn.num_batches_tracked" not in loaded
    assert torch.equal(built.module.state_dict()["bn.weight"], state["bn.weight"])


def test_missing_running_stats_warn_but_load():
    state = {k: v.clone() for k, v in _WithBuffers().state_dict().items()
             if not k.startswith("bn.running_")}
    built = BuiltModel(_WithBuffers(), origin="m")
    with pytest.warns(FlqAuditWarning, match=r"lacks buffer\(s\) \[bn\.running_mean, bn\.running_var\]"):
        load_weights(built, state, step=4)
    assert torch.equal(built.module.state_dict()["fc.weight"], state["fc.weight"])


def test_stray_num_batches_tracked_is_ignored():
    # a checkpoint from a BatchNorm model loaded into a model whose norm keeps no counter
    state = _mlp_state()
    state["layers.0.num_batches_tracked"] = torch.tensor(3)

    loaded = load_weights(_mlp(), state, step=0)

    assert "layers.0.num_batches_tracked" not in loaded


# ------------------------------------------------------------------ bad specs
def test_unknown_model_type(tmp_path):
    with pytest.raises(ModelBuildError, match=r"unknown model type 'rnn'; expected one of \['mlp', 'cnn'\]"):
        build_model(_spec_file(tmp_path, {**MLP_SPEC, "type": "rnn"}))


def test_unknown_activation(tmp_path):
    with pytest.raises(ModelBuildError, match=r"unknown activation 'swish'; expected one of \[.*'gelu'"):
        build_model(_spec_file(tmp_path, {**MLP_SPEC, "activation": "swish"}))


def test_unknown_spec_field(tmp_path):
    path = _spec_file(tmp_path, {**MLP_SPEC, "depth": 3})
    with pytest.raises(ModelBuildError, match=r"invalid mlp spec .*'depth'"):
        build_model(path)


def test_cnn_lists_of_different_length():
    with pytest.raises(ModelBuildError, match="differ in length"):
        build_from_spec({**CNN_SPEC, "kernel_sizes": [3]})


def test_spec_file_missing(tmp_path):
    with pytest.raises(ModelBuildError, match=r"model spec .*gone\.json.* does not exist"):
        build_model(str(tmp_path / "gone.json"))


def test_spec_file_not_json(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text("{type: mlp")
    with pytest.raises(ModelBuildError, match="is not valid JSON"):
        build_model(str(path))


def test_spec_file_not_an_object(tmp_path):
    with pytest.raises(ModelBuildError, match="must be a JSON object"):
        build_model(_spec_file(tmp_path, [1, 2]))


def test_model_argument_that_is_neither(tmp_path):
    with pytest.raises(ModelBuildError, match=r"neither an existing \.json spec nor 'module:function'"):
        build_model("some_model")
    other = tmp_path / "weights.yaml"
    other.write_text("x")
    with pytest.raises(ModelBuildError, match=r"expected a \.json spec or 'file\.py:function'"):
        build_model(str(other))


@pytest.mark.parametrize("activation", [None, 5])
def test_non_string_activation(activation):
    kind = type(activation).__name__
    with pytest.raises(ModelBuildError,
                       match=rf"activation must be a string, got {activation!r} \({kind}\)"):
        build_from_spec({**MLP_SPEC, "activation": activation})
