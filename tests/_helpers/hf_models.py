"""Tiny random transformers checkpoints with a real (trained-on-the-fly) BPE tokenizer."""

from __future__ import annotations

import json
from pathlib import Path

import torch

TEXTS = [
    "the cat sat on the mat", "a dog ran in the park today", "birds fly high",
    "the sun is hot", "rain falls down on the town", "a cat and a dog play",
    "snow is cold and white", "fish swim", "the wind blows hard tonight",
]
LABELS = ["animal", "animal", "animal", "weather", "weather", "animal", "weather", "animal",
          "weather"]


def tokenizer():
    import transformers
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel()
    tok.train_from_iterator(TEXTS * 3, trainers.BpeTrainer(
        vocab_size=160, special_tokens=["[UNK]", "[PAD]", "[EOS]", "[CLS]"]))
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", eos_token="[EOS]",
        cls_token="[CLS]")


def model_for(family: str, vocab_size: int, seed: int):
    import transformers

    torch.manual_seed(seed)
    if family == "neox":
        cfg = transformers.GPTNeoXConfig(vocab_size=vocab_size, hidden_size=32,
                                         num_hidden_layers=2, num_attention_heads=4,
                                         intermediate_size=64)
        return transformers.GPTNeoXForCausalLM(cfg)
    if family == "gpt2":
        cfg = transformers.GPT2Config(vocab_size=vocab_size, n_embd=32, n_layer=2, n_head=4,
                                      n_positions=64, bos_token_id=2, eos_token_id=2)
        return transformers.GPT2LMHeadModel(cfg)
    cfg = transformers.BertConfig(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2,
                                  num_attention_heads=4, intermediate_size=64,
                                  max_position_embeddings=64)
    return transformers.BertModel(cfg)


def trainer_run(root: Path, family: str, steps: tuple[int, ...] = (0, 10)) -> Path:
    """``root/checkpoint-N/`` folders (weights, config, tokenizer) and ``root/probe.jsonl``."""
    root.mkdir(parents=True, exist_ok=True)
    tok = tokenizer()
    for step in steps:
        folder = root / f"checkpoint-{step}"
        model_for(family, tok.vocab_size, seed=step).save_pretrained(folder)
        tok.save_pretrained(folder)
    with open(root / "probe.jsonl", "w") as handle:
        for text, label in zip(TEXTS, LABELS, strict=True):
            handle.write(json.dumps({"text": text, "label": label,
                                     "tokens": text.split(), "tags": [label[0]] * len(text.split())})
                         + "\n")
    return root
