"""The training recipes: file layout, exact plain-SGD provenance, and grokking."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from flq_audit.models import build_from_spec
from flq_audit.recipes import grokking_mlp, sgd_every_step

# ----------------------------------------------------------------------------- sgd_every_step


def _batch_gradient(model, x, y, state):
    model.load_state_dict(state)
    model.zero_grad(set_to_none=True)
    torch.nn.CrossEntropyLoss(reduction="mean")(model(x), y).backward()
    return {name: param.grad.detach().clone() for name, param in model.named_parameters()}


def test_sgd_every_step_files(sgd_run_64):
    steps = 6
    for t in range(steps + 1):
        assert (sgd_run_64 / f"step_{t}.safetensors").is_file()
    assert not (sgd_run_64 / f"step_{steps + 1}.safetensors").exists()
    for name in ("probe.npz", "model_spec.json", "fl_batches.json"):
        assert (sgd_run_64 / name).is_file()
    log = json.loads((sgd_run_64 / "fl_batches.json").read_text())
    assert log["loss"] == "ce" and log["lr"] == 0.1
    assert sorted(log["batches"], key=int) == [str(t) for t in range(steps)]  # every step but the last
    probe = np.load(sgd_run_64 / "probe.npz")
    n = probe["inputs"].shape[0]
    assert probe["inputs"].dtype == np.float64 and probe["inputs"].shape == (n, 64)
    assert probe["targets"].dtype == np.int64 and int(probe["num_classes"]) == 10
    for rows in log["batches"].values():
        assert len(rows) == 32 and len(set(rows)) == 32
        assert min(rows) >= 0 and max(rows) < n
    state = load_file(str(sgd_run_64 / "step_0.safetensors"))
    assert all(v.dtype == torch.float64 for v in state.values())


def test_sgd_every_step_is_exact_plain_sgd(sgd_run_64):
    """W_{t+1} = W_t − lr·∇_W L(batch t), recomputed from the files alone, to ~1e-12."""
    spec = json.loads((sgd_run_64 / "model_spec.json").read_text())
    log = json.loads((sgd_run_64 / "fl_batches.json").read_text())
    probe = np.load(sgd_run_64 / "probe.npz")
    x_all, y_all = torch.from_numpy(probe["inputs"]), torch.from_numpy(probe["targets"])
    model = build_from_spec(spec).double()
    lr = log["lr"]
    linear = [name for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    assert linear == ["layers.0", "layers.1", "layers.2"]
    worst = 0.0
    for t_str, rows in log["batches"].items():
        t = int(t_str)
        before = load_file(str(sgd_run_64 / f"step_{t}.safetensors"))
        after = load_file(str(sgd_run_64 / f"step_{t + 1}.safetensors"))
        idx = torch.tensor(rows)
        grads = _batch_gradient(model, x_all[idx], y_all[idx], before)
        for name in linear:
            key = f"{name}.weight"
            predicted = before[key] - lr * grads[key]
            step_size = (lr * grads[key]).norm()
            assert step_size > 0
            # relative to the size of the update itself, the strictest sensible scale
            rel = float((after[key] - predicted).norm() / step_size)
            worst = max(worst, rel)
            # and elementwise against the weights
            torch.testing.assert_close(after[key], predicted, rtol=1e-12, atol=1e-12)
    assert worst < 1e-10, worst


def test_sgd_every_step_float32_default(tmp_path):
    out = sgd_every_step.train(tmp_path / "run", steps=2)
    state = load_file(str(out / "step_2.safetensors"))
    assert all(v.dtype == torch.float32 for v in state.values())
    assert np.load(out / "probe.npz")["inputs"].dtype == np.float32
    log = json.loads((out / "fl_batches.json").read_text())
    assert list(log["batches"]) == ["0", "1"]


def test_sgd_every_step_main(tmp_path, capsys):
    sgd_every_step.main([str(tmp_path / "cli"), "--steps", "1", "--dtype", "float64", "--batch-size", "8"])
    log = json.loads((tmp_path / "cli" / "fl_batches.json").read_text())
    assert [len(v) for v in log["batches"].values()] == [8]
    assert str(tmp_path / "cli") in capsys.readouterr().out


# ------------------------------------------------------------------------------- grokking_mlp


def test_grokking_recipe_tiny_budget(tmp_path):
    p = 7
    out = grokking_mlp.train(tmp_path / "run", p=p, total_steps=25, checkpoint_every=10, seed=1)
    expected_steps = [0, 10, 20, 25]
    for step in expected_steps:
        assert (out / f"step_{step}.safetensors").is_file()
    spec = json.loads((out / "model_spec.json").read_text())
    assert spec == {"type": "mlp", "in_features": 2 * p, "widths": [128, 128, 128], "out_features": p,
                    "activation": "relu", "bias": True}
    probe = np.load(out / "probe.npz")
    n_train = round(0.7 * p * p)
    assert probe["inputs"].shape == (n_train, 2 * p) and probe["inputs"].dtype == np.float32
    assert np.all(probe["inputs"].sum(axis=1) == 2)
    assert probe["targets"].dtype == np.int64 and int(probe["num_classes"]) == p
    a, b = probe["inputs"][:, :p].argmax(1), probe["inputs"][:, p:].argmax(1)
    np.testing.assert_array_equal(probe["targets"], (a + b) % p)
    test_probe = np.load(out / "test_probe.npz")
    assert test_probe["inputs"].shape[0] == p * p - n_train
    metrics = json.loads((out / "metrics.json").read_text())
    assert [c["step"] for c in metrics["checkpoints"]] == expected_steps
    for c in metrics["checkpoints"]:
        for key in ("train_accuracy", "test_accuracy"):
            assert 0.0 <= c[key] <= 1.0
        assert c["train_loss"] >= 0 and c["test_loss"] >= 0
    model = build_from_spec(spec)
    for step in expected_steps:
        model.load_state_dict(load_file(str(out / f"step_{step}.safetensors")))  # strict
    # the saved metrics describe the saved weights
    with torch.no_grad():
        logits = model(torch.from_numpy(probe["inputs"]))
    accuracy = float((logits.argmax(1) == torch.from_numpy(probe["targets"])).float().mean())
    assert accuracy == pytest.approx(metrics["checkpoints"][-1]["train_accuracy"])


def test_grokking_split_is_seeded():
    _, _, train_a, test_a = grokking_mlp.modular_addition(11, seed=3)
    _, _, train_b, _ = grokking_mlp.modular_addition(11, seed=3)
    np.testing.assert_array_equal(train_a, train_b)
    assert len(np.intersect1d(train_a, test_a)) == 0 and len(train_a) + len(test_a) == 121


def _grokking_milestones(out, generalised_at: float = 0.9) -> tuple[list[dict], int, int | None]:
    """The checkpoint history, the first step with train accuracy 1 and the first with test
    accuracy ≥ ``generalised_at`` (``None`` when no checkpoint reaches it)."""
    history = json.loads((out / "metrics.json").read_text())["checkpoints"]
    memorised = next(c["step"] for c in history if c["train_accuracy"] == 1.0)
    generalised = next((c["step"] for c in history if c["test_accuracy"] >= generalised_at), None)
    return history, memorised, generalised


#: Test accuracy the shortened run reaches after memorising, with a wide margin: about
#: 5x chance (1/23). How far it gets in 3000 steps depends on the seed and on the CPU's AdamW
#: arithmetic (its best was 0.42 to 0.94 over seeds 0-2, fused and plain kernels); 0.9 needs
#: the full run.
SHORT_RUN_GENERALISED = 0.2


@pytest.mark.slow
def test_grokking_recipe_memorises_then_generalises(grokking_run):
    """The shortened run (p = 23, lr 5e-3, 3000 steps; a few seconds) memorises first (train
    accuracy 1 while test accuracy is near chance), and test accuracy rises well above
    chance only afterwards: the order the recipe promises, not the full run's 0.9."""
    history, memorised, generalised = _grokking_milestones(grokking_run, SHORT_RUN_GENERALISED)
    at_memorisation = next(c for c in history if c["step"] == memorised)
    assert at_memorisation["test_accuracy"] < 0.1, at_memorisation  # chance is 1/23 = 0.043
    assert generalised is not None, [c["test_accuracy"] for c in history]
    assert memorised < generalised, (memorised, generalised)


@pytest.mark.slow
@pytest.mark.full
def test_grokking_recipe_groks_with_defaults(tmp_path):
    """The default run (25 000 steps, about 50 s of one CPU core) memorises long before it
    generalises. Opt-in: ``-m full`` or ``FLQ_AUDIT_FULL=1``."""
    started = time.perf_counter()
    out = grokking_mlp.train(tmp_path / "run")
    elapsed = time.perf_counter() - started
    history, memorised, generalised = _grokking_milestones(out)
    assert history[-1]["test_accuracy"] >= 0.9, history[-1]
    assert generalised is not None and memorised < generalised, (memorised, generalised)
    print(f"grokking defaults: {elapsed:.1f} s, train acc 1 at step {memorised}, "
          f"test acc 0.9 at step {generalised}")
