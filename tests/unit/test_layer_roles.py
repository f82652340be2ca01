"""``--layers`` by role on real transformers models of each family (tiny random configs)."""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open
from torch import nn

from flq_audit.capture import select_layers, weight_layer_infos
from flq_audit.capture.roles import FAMILIES, resolve_roles, roles_of, split_layers
from flq_audit.errors import LayerNotFoundError, OptionError

transformers = pytest.importorskip("transformers")

BLOCKS = 3


def _model(family: str) -> nn.Module:
    """A 3-block causal LM of ``family``, random weights."""
    torch.manual_seed(0)
    small = {"vocab_size": 64, "hidden_size": 16, "num_hidden_layers": BLOCKS,
             "num_attention_heads": 2}
    if family == "gpt_neox":
        return transformers.GPTNeoXForCausalLM(transformers.GPTNeoXConfig(
            **small, intermediate_size=32))
    if family == "gpt2":
        return transformers.GPT2LMHeadModel(transformers.GPT2Config(
            vocab_size=64, n_embd=16, n_layer=BLOCKS, n_head=2, n_positions=32,
            bos_token_id=0, eos_token_id=0))
    if family == "llama":
        return transformers.LlamaForCausalLM(transformers.LlamaConfig(
            **small, num_key_value_heads=1, intermediate_size=32))
    if family == "mistral":
        return transformers.MistralForCausalLM(transformers.MistralConfig(
            **small, num_key_value_heads=1, intermediate_size=32))
    assert family == "opt"
    return transformers.OPTForCausalLM(transformers.OPTConfig(
        vocab_size=64, hidden_size=16, num_hidden_layers=BLOCKS, num_attention_heads=2,
        ffn_dim=32, word_embed_proj_dim=16, max_position_embeddings=32))


@pytest.fixture(scope="module")
def models() -> dict[str, nn.Module]:
    return {f: _model(f) for f in ("gpt_neox", "gpt2", "llama", "mistral", "opt")}


def _blocks(template: str, blocks=range(BLOCKS)) -> list[str]:
    return [template.format(i) for i in blocks]


# Written out from each family's transformers module names.
EXPECTED = {
    ("gpt_neox", "mlp.down"): _blocks("gpt_neox.layers.{}.mlp.dense_4h_to_h"),
    ("gpt_neox", "mlp.up"): _blocks("gpt_neox.layers.{}.mlp.dense_h_to_4h"),
    ("gpt_neox", "attn.qkv"): _blocks("gpt_neox.layers.{}.attention.query_key_value"),
    ("gpt_neox", "attn.out"): _blocks("gpt_neox.layers.{}.attention.dense"),
    ("gpt_neox", "unembed"): ["lm_head"],
    ("gpt2", "mlp.down"): _blocks("transformer.h.{}.mlp.c_proj"),
    ("gpt2", "mlp.up"): _blocks("transformer.h.{}.mlp.c_fc"),
    ("gpt2", "attn.qkv"): _blocks("transformer.h.{}.attn.c_attn"),
    ("gpt2", "attn.out"): _blocks("transformer.h.{}.attn.c_proj"),
    ("gpt2", "unembed"): ["lm_head"],
    ("llama", "mlp.gate"): _blocks("model.layers.{}.mlp.gate_proj"),
    ("llama", "mlp.up"): _blocks("model.layers.{}.mlp.up_proj"),
    ("llama", "mlp.down"): _blocks("model.layers.{}.mlp.down_proj"),
    ("llama", "attn.q"): _blocks("model.layers.{}.self_attn.q_proj"),
    ("llama", "attn.k"): _blocks("model.layers.{}.self_attn.k_proj"),
    ("llama", "attn.v"): _blocks("model.layers.{}.self_attn.v_proj"),
    ("llama", "attn.out"): _blocks("model.layers.{}.self_attn.o_proj"),
    ("llama", "unembed"): ["lm_head"],
    ("mistral", "mlp.down"): _blocks("model.layers.{}.mlp.down_proj"),
    ("opt", "mlp.up"): _blocks("model.decoder.layers.{}.fc1"),
    ("opt", "mlp.down"): _blocks("model.decoder.layers.{}.fc2"),
    ("opt", "attn.q"): _blocks("model.decoder.layers.{}.self_attn.q_proj"),
    ("opt", "attn.out"): _blocks("model.decoder.layers.{}.self_attn.out_proj"),
    ("opt", "unembed"): ["lm_head"],
}


@pytest.mark.parametrize(("family", "role"), list(EXPECTED))
def test_a_role_selects_its_layer_in_every_block(models, family, role):
    chosen = select_layers(models[family], [role])
    assert list(chosen) == EXPECTED[family, role]
    named = dict(models[family].named_modules())
    assert all(chosen[n] is named[n] for n in chosen)


def test_attn_qkv_of_a_split_attention_is_its_three_projections(models):
    chosen = select_layers(models["llama"], ["attn.qkv@1"])
    assert list(chosen) == [f"model.layers.1.self_attn.{p}_proj" for p in "qkv"]


@pytest.mark.parametrize(("selector", "blocks"), [
    ("attn.out@0,2", [0, 2]), ("attn.out@2,0", [0, 2]), ("attn.out@-1", [2]),
    ("attn.out@0:3:2", [0, 2]), ("attn.out@1:", [1, 2]), ("attn.out@::-1", [0, 1, 2]),
    ("attn.out@:1", [0]),
])
def test_blocks_by_index_or_slice(models, selector, blocks):
    assert list(select_layers(models["gpt_neox"], [selector])) == _blocks(
        "gpt_neox.layers.{}.attention.dense", blocks)


def test_roles_mix_with_names_and_globs_in_model_order(models):
    chosen = select_layers(models["gpt2"], ["unembed", "mlp.down@1", "transformer.h.0.attn.*"])
    assert list(chosen) == ["transformer.h.0.attn.c_attn", "transformer.h.0.attn.c_proj",
                            "transformer.h.1.mlp.c_proj", "lm_head"]


def _refused(model: nn.Module, selector: str, error=LayerNotFoundError) -> str:
    with pytest.raises(error) as info:
        select_layers(model, [selector])
    return str(info.value)


def test_a_role_the_family_lacks_names_role_family_and_the_roles_it_has(models):
    message = _refused(models["gpt_neox"], "mlp.gate")
    assert "'mlp.gate'" in message and "gpt_neox" in message
    assert "attn.qkv, attn.out, mlp.up, mlp.down" in message
    message = _refused(models["gpt2"], "attn.q@0")
    assert "'attn.q@0'" in message and "gpt2" in message and "attn.qkv" in message


def test_an_unknown_role_names_the_family_and_its_roles(models):
    message = _refused(models["llama"], "mlp.dwn")
    assert "unknown role" in message and "'mlp.dwn'" in message and "llama" in message
    assert "mlp.gate, mlp.up, mlp.down" in message
    assert "unknown role" in _refused(models["opt"], "ffn@0")


def test_a_block_out_of_range_names_the_number_of_blocks(models):
    message = _refused(models["opt"], "mlp.down@0,3")
    assert "block 3 is out of range" in message and "opt" in message and "3 blocks" in message
    assert "-4" in _refused(models["opt"], "mlp.down@-4")
    assert "selects no block" in _refused(models["opt"], "mlp.down@5:")


@pytest.mark.parametrize("selector", ["mlp.down@x", "mlp.down@1:2:0", "mlp.down@", "unembed@0"])
def test_a_malformed_block_selection_is_a_usage_error(models, selector):
    assert f"'{selector}'" in _refused(models["gpt_neox"], selector, OptionError)


def test_embed_in_a_replay_audit_points_at_weights_only(models):
    message = _refused(models["gpt_neox"], "embed")
    assert "gpt_neox.embed_in" in message and "--weights-only" in message


class _Plain(nn.Module):
    """Not a language model; one module is called like a role."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(4, 8)
        self.layers = nn.ModuleList([nn.Linear(8, 8), nn.Linear(8, 2)])


def test_models_of_no_family_keep_names_and_globs():
    model = _Plain()
    assert list(select_layers(model, ["layers.*"])) == ["layers.0", "layers.1"]
    assert list(select_layers(model, ["embed"])) == ["embed"]  # its own layer, not a role
    message = _refused(model, "mlp.down")
    assert "'mlp.down'" in message and "no family" in message and "gpt_neox" in message


def test_split_layers_keeps_block_lists_with_their_role():
    assert split_layers(["attn.out@0,8,15,unembed", "mlp.down", "a.*,b"]) == [
        "attn.out@0,8,15", "unembed", "mlp.down", "a.*", "b"]
    assert split_layers(["layers.0,1"]) == ["layers.0", "1"]  # no role: plain commas


def _shapes(model: nn.Module, folder) -> dict[str, tuple[int, ...]]:
    """Tensor names and shapes as ``save_pretrained`` writes them (tied weights once)."""
    model.save_pretrained(folder)
    with safe_open(str(folder / "model.safetensors"), "pt") as handle:
        return {k: tuple(handle.get_slice(k).get_shape()) for k in handle.keys()}  # noqa: SIM118


def test_weights_only_roles_select_parameter_keys(models, tmp_path):
    neox = _shapes(models["gpt_neox"], tmp_path / "neox")
    infos = weight_layer_infos(neox, model_type="gpt_neox",
                               patterns=["embed", "unembed", "mlp.down@1"])
    assert [i.name for i in infos] == [  # in the checkpoint's key order; Pythia's unembedding
        "embed_out", "gpt_neox.embed_in", "gpt_neox.layers.1.mlp.dense_4h_to_h"]
    assert {i.name: i.gram_width for i in infos}["gpt_neox.embed_in"] == 16
    gpt2 = _shapes(models["gpt2"], tmp_path / "gpt2")
    assert "lm_head.weight" not in gpt2  # tied to the embedding: the unembedding is wte
    infos = weight_layer_infos(gpt2, model_type="gpt2", patterns=["unembed", "attn.qkv@0"])
    assert [(i.name, i.kind, i.gram_width) for i in infos] == [
        ("transformer.h.0.attn.c_attn", "Conv1D", 16), ("transformer.wte", "weight2d", 16)]
    with pytest.raises(LayerNotFoundError, match=r"mlp\.gate.*gpt2"):
        weight_layer_infos(gpt2, model_type="gpt2", patterns=["mlp.gate"])


def test_every_family_agrees_on_the_role_of_a_shared_name():
    """A name two families both know has one role (the dry run may infer the family); a
    projection that two roles select (Llama's q_proj: attn.q and attn.qkv) has the narrower."""
    for family in FAMILIES:
        for role, tails in family.roles.items():
            if role == "attn.qkv" and len(tails) == 3:
                continue  # q, k and v: each has its own role
            for tail in tails:
                name = tail if role in ("embed", "unembed") else f"model.layers.7.{tail}"
                name = name.replace("layers.7", "h.7") if family.name == "gpt2" else name
                assert family.role_of(name) == role
                others = {f.role_of(name) for f in FAMILIES} - {None}
                assert others == {role}, (family.name, name, others)


def test_roles_of_names_without_a_model_type():
    names = ["gpt_neox.layers.0.mlp.dense_4h_to_h", "embed_out", "gpt_neox.layers.0.attention.dense"]
    assert roles_of(names, None) == ["mlp.down", "unembed", "attn.out"]
    assert roles_of(["lm_head"], None) == ["unembed"]
    assert roles_of(["layers.0", "classifier"], None) == [None, None]


def test_resolve_roles_reports_each_selected_names_role():
    names = ["model.layers.0.self_attn.q_proj", "model.layers.0.mlp.down_proj", "lm_head"]
    patterns, roles = resolve_roles(["mlp.down", "lm_*"], names, model_type="olmo")
    assert patterns == ["model.layers.0.mlp.down_proj", "lm_*"]
    assert roles == {"model.layers.0.mlp.down_proj": "mlp.down"}
