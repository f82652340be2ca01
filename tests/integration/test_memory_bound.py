"""Peak memory of an audit of a sharded transformers checkpoint, measured in a child process.

The bound is the one the project states (``docs/performance.md``): peak RSS over the
interpreter's own (measured in the child after its imports, before any model is built) is at
most 1.3 × the checkpoints held at once (the step being replayed, plus the prefetched one when
the FL residual reads it ahead; the bound keeps room for it) + the activations of one batch
+ the Gram of the widest layer (formed one at a time). The
model is sized so that one more model-sized copy (the plan-time model kept alive, a float64
copy of the weights, every shard merged into one state dict next to the model) breaks it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests._helpers.hf_models import LABELS, TEXTS, tokenizer

pytest.importorskip("transformers")

#: GPT-NeoX, 4 blocks of width 512, a 32768-token vocabulary (≈ 46 M parameters, ≈ 185 MB
#: in float32; the embeddings hold most of it, as in a small LM).
SHAPE = {"hidden_size": 512, "num_hidden_layers": 4, "num_attention_heads": 8,
         "intermediate_size": 2048, "vocab_size": 32768, "max_position_embeddings": 128}
STEPS = (0, 10)

_CHILD = r"""
import json, resource, sys
import numpy, safetensors.torch, torch, transformers, xarray, zarr
from transformers import GPTNeoXForCausalLM
from flq_audit import api
from flq_audit.options import CaptureOptions, RunOptions, TextProbeOptions

def peak_bytes():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

run, probe, out, prefetch = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] == "1"
torch.set_num_threads(1)
baseline = peak_bytes()
plan = api.plan_audit(run, probe=probe, out=out, text=TextProbeOptions(pooling="last"))
result = api.run_audit(plan, RunOptions(prefetch=prefetch, device="cpu", threads=1))
print("RESULT", json.dumps({"baseline": baseline, "peak": peak_bytes(), "written": result.written,
                  "failed": [str(f) for f in result.failed]}))
"""


def _sharded_run(root: Path) -> tuple[Path, int]:
    """Two ``checkpoint-N/`` folders of a GPT-NeoX model saved in 40 MB shards, and the
    float32 bytes of one checkpoint (the sum of its tensors' sizes)."""
    import torch
    import transformers

    torch.manual_seed(0)
    model = transformers.GPTNeoXForCausalLM(transformers.GPTNeoXConfig(**SHAPE))
    tok = tokenizer()
    for step in STEPS:
        if step:
            with torch.no_grad():
                for parameter in model.parameters():
                    parameter.add_(1e-3)
        folder = root / f"checkpoint-{step}"
        model.save_pretrained(folder, max_shard_size="40MB")
        tok.save_pretrained(folder)
    weights = sum(p.numel() * p.element_size() for p in model.state_dict().values())
    with open(root / "probe.jsonl", "w") as handle:
        for text, label in zip(TEXTS, LABELS, strict=True):
            handle.write(json.dumps({"text": text, "label": label}) + "\n")
    return root, weights


def gram_working_set() -> int:
    """Bytes the writer holds while it forms a step's Grams, one matrix at a time on one of
    its threads, at the widest matrix: the float64 W (d_out × d_in) or its row blocks, the
    float64 WᵀW, its float32 copy and the compressed chunks (at most as large)."""
    d, inner, vocab = SHAPE["hidden_size"], SHAPE["intermediate_size"], SHAPE["vocab_size"]
    block = [(3 * d, d), (d, d), (inner, d), (d, inner)]
    matrices = block * SHAPE["num_hidden_layers"] + [(vocab, d)]  # the unembedding last
    return max(8 * d_out * d_in + (8 + 4 + 4) * d_in * d_in for d_out, d_in in matrices)


@pytest.fixture(scope="module")
def sharded(tmp_path_factory) -> tuple[Path, int]:
    return _sharded_run(tmp_path_factory.mktemp("sharded"))


def _audit_peak(run: Path, out: Path, *, prefetch: bool) -> dict:
    """The child's RSS after its imports and its peak, in bytes. The child uses one malloc
    arena: glibc's per-thread arenas keep what the writer's threads freed resident, by an
    amount that depends on how the threads were scheduled (measured: 0 to 70 MB here), and
    the bound is about the audit's own allocations, not the allocator's caches."""
    env = {**os.environ, "MALLOC_ARENA_MAX": "1"}
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, str(run), str(run / "probe.jsonl"), str(out),
         "1" if prefetch else "0"], capture_output=True, text=True, timeout=300, check=False,
        env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    line = next(x for x in done.stdout.splitlines() if x.startswith("RESULT "))
    return json.loads(line.removeprefix("RESULT "))


@pytest.mark.parametrize("prefetch", [True, False], ids=["prefetch", "no-prefetch"])
def test_sharded_audit_peak_rss_within_the_bound(sharded, tmp_path, prefetch):
    run, weights = sharded
    assert len(list((run / "checkpoint-0").glob("model-*.safetensors"))) >= 4
    measured = _audit_peak(run, tmp_path / "s.zarr", prefetch=prefetch)
    assert measured["written"] == list(STEPS) and not measured["failed"]
    held = 2 if prefetch else 1
    # one batch of activations: 9 texts of under 16 tokens, pooled to one row per text, of
    # every captured layer's input width, float32 (a generous 1 MB)
    batch = 1 << 20
    bound = 1.3 * held * weights + batch + gram_working_set()
    grown = measured["peak"] - measured["baseline"]
    print(f"grown {grown / 2**20:.0f} MiB, bound {bound / 2**20:.0f} MiB")
    assert grown <= bound, (
        f"peak RSS grew {grown / 2**20:.0f} MiB over the interpreter's "
        f"{measured['baseline'] / 2**20:.0f} MiB; the bound is {bound / 2**20:.0f} MiB "
        f"({held} checkpoint(s) of {weights / 2**20:.0f} MiB)")


def test_the_plan_holds_a_transformers_model_without_weights(tmp_path):
    from flq_audit import api
    from tests._helpers.hf_models import trainer_run

    run = trainer_run(tmp_path / "run", "neox")
    plan = api.plan_audit(str(run), probe=str(run / "probe.jsonl"), out=tmp_path / "s.zarr")
    assert plan.built is not None and plan.layers
    devices = {t.device.type for t in (*plan.built.module.parameters(),
                                       *plan.built.module.buffers())}
    assert devices == {"meta"}, devices  # the steps load models of their own
