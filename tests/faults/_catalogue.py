"""The bad-input catalogue: a small world of real files, and every bad command run against it.

Each case is ``Case(id, args, code, first)``: the command line (``{run}``, ``{store}`` ... are
paths of :func:`build_world`), the exit code, and the start of the first line on stderr
(after ``error:``; compared without whitespace, as Rich wraps long lines).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from tests._helpers.runs import SMALL_SPEC, make_run


@dataclass(frozen=True)
class Case:
    id: str
    args: tuple[str, ...]
    code: int
    first: str
    subprocess: bool = False


def build_world(root: Path) -> dict[str, Path]:
    """Every file the cases point at: a run, a finished store, a user's folder and files."""
    run = make_run(root / "run")
    world = {"root": root, "run": run, "store": root / "store.zarr"}
    notes = root / "notes"
    notes.mkdir()
    (notes / "todo.txt").write_text("keep me\n")
    (root / "notes.txt").write_text("my notes\n")
    (root / "plain").mkdir()
    (root / "empty_run").mkdir()
    world["empty_run"] = root / "empty_run"
    os.symlink(world["store"], root / "link.zarr")
    import zarr

    other = zarr.open_group(str(root / "other.zarr"), mode="w", zarr_format=3)
    other.create_array("x", shape=(3,), dtype="f8")
    specs = root / "specs"
    specs.mkdir()
    bad_specs = {
        "negative_width": {**SMALL_SPEC, "widths": [8, -4]},
        "zero_width": {**SMALL_SPEC, "widths": [0, 8]},
        "widths_not_list": {**SMALL_SPEC, "widths": 8},
        "unknown_type": {**SMALL_SPEC, "type": "transformer"},
        "unknown_activation": {**SMALL_SPEC, "activation": "swoosh"},
        "missing_in_features": {k: v for k, v in SMALL_SPEC.items() if k != "in_features"},
        "huge_width": {**SMALL_SPEC, "widths": [10**12, 8]},
        "wrong_in_features": {**SMALL_SPEC, "in_features": 7},
        "float_width": {**SMALL_SPEC, "widths": [8.5, 8]},
        "bias_text": {**SMALL_SPEC, "bias": "yes"},
    }
    for name, spec in bad_specs.items():
        (specs / f"{name}.json").write_text(json.dumps(spec))
    (specs / "not_json.json").write_text("{type: mlp")
    (specs / "array.json").write_text("[1, 2, 3]")
    (specs / "empty.json").write_text("")
    (specs / "latin1.json").write_bytes(b'{"type": "mlp\xe9"}')
    (specs / "nets.py").write_text("def make():\n    raise RuntimeError('boom')\n")
    (specs / "syntax.py").write_text("def make(:\n")
    probes = root / "probes"
    probes.mkdir()
    x = np.zeros((10, 6), np.float32)
    np.savez(probes / "no_targets.npz", inputs=x)
    np.savez(probes / "wrong_features.npz", inputs=np.zeros((10, 5), np.float32),
             targets=np.zeros(10, np.int64), num_classes=np.int64(3))
    np.savez(probes / "length_mismatch.npz", inputs=x, targets=np.zeros(7, np.int64),
             num_classes=np.int64(3))
    np.savez(probes / "empty.npz", inputs=np.zeros((0, 6), np.float32),
             targets=np.zeros(0, np.int64), num_classes=np.int64(3))
    np.savez(probes / "label_too_big.npz", inputs=x, targets=np.full(10, 9, np.int64),
             num_classes=np.int64(3))
    np.savez(probes / "nan_inputs.npz", inputs=np.full((10, 6), np.nan, np.float32),
             targets=np.zeros(10, np.int64), num_classes=np.int64(3))
    (probes / "garbage.npz").write_bytes(b"not a zip file at all")
    (probes / "garbage.safetensors").write_bytes(b"\x00\x01garbage")
    (probes / "text.csv").write_text("")
    _odd_runs(root, world)
    return world


def _odd_runs(root: Path, world: dict[str, Path]) -> None:
    """Checkpoint folders with one defect each."""
    state = {k: v.contiguous() for k, v in
             torch.nn.Linear(6, 8).state_dict().items()}
    huge = root / "huge_step"
    make_run(huge, steps=(0,))
    save_file(state, str(huge / "step_99999999999999999999999999.safetensors"))
    clash = make_run(root / "clash", steps=(0, 10))
    (clash / "checkpoint-10").mkdir()
    save_file(state, str(clash / "checkpoint-10" / "model.safetensors"))
    wrong = make_run(root / "wrong_shapes", steps=(0,))
    save_file(state, str(wrong / "step_5.safetensors"))
    dangling = make_run(root / "dangling", steps=(0,))
    os.symlink(root / "gone.safetensors", dangling / "step_7.safetensors")
    for name in ("huge_step", "clash", "wrong_shapes", "dangling"):
        world[name] = root / name


AUDIT = ("audit", "{run}", "--out", "{out}")

CASES: list[Case] = [
    # ---------------------------------------------------------- --steps grammar (usage: 2)
    *[Case(f"steps-{i}", (*AUDIT, "--steps", expr), 2, f"--steps {expr!r}")
      for i, expr in enumerate(["a:b", "1:x", "0:10:0", "log:", "log:x", "first:-1", "1,,x",
                                "0:10:-5", "%", "last:abc"])],
    # ---------------------------------------------------------- selections that find nothing (4)
    Case("steps-missing", (*AUDIT, "--steps", "5,10"), 4, "--steps"),
    # ---------------------------------------------------------- option values (usage: 2)
    Case("batch-size-0", (*AUDIT, "--batch-size", "0"), 2, "Usage:"),
    Case("batch-size-neg", (*AUDIT, "--batch-size", "-3"), 2, "Usage:"),
    Case("batch-size-text", (*AUDIT, "--batch-size", "many"), 2, "Usage:"),
    Case("max-samples-0", (*AUDIT, "--max-samples", "0"), 2, "Usage:"),
    Case("max-length-0", (*AUDIT, "--max-length", "0"), 2, "Usage:"),
    Case("top-k-0", (*AUDIT, "--top-k", "0"), 2, "Usage:"),
    Case("threads-huge", (*AUDIT, "--threads", "100000"), 2,
         "--threads (threads) must be between 1 and 1024; got 100000"),
    Case("storage-options-kwargs-not-object",
         (*AUDIT[:3], "memory://flq-catalogue/out.zarr", "--storage-options",
          '{{"client_kwargs": 5}}'), 2,
         "--storage-options: 'client_kwargs' must be a JSON object; got an integer (5)"),
    Case("storage-options-endpoint-not-text",
         ("show", "memory://flq-catalogue/x.zarr", "--storage-options",
          '{{"client_kwargs": {{"endpoint_url": 9000}}}}'), 2,
         "--storage-options: 'client_kwargs.endpoint_url' must be a string; got an integer"),
    Case("storage-options-anon-text",
         ("show", "memory://flq-catalogue/x.zarr", "--storage-options", '{{"anon": "yes"}}'), 2,
         "--storage-options: 'anon' must be true or false; got a string"),
    # choices are checked by the option parser (the usage, then the option and its values)
    Case("activation-dtype", (*AUDIT, "--activation-dtype", "float8"), 2, "Usage:"),
    Case("gram-dtype", (*AUDIT, "--gram-dtype", "int8"), 2, "Usage:"),
    Case("task", (*AUDIT, "--task", "poetry"), 2, "Usage:"),
    Case("pooling", (*AUDIT, "--pooling", "max"), 2, "Usage:"),
    Case("cache", (*AUDIT, "--cache", "sometimes"), 2, "Usage:"),
    Case("fl-partial", (*AUDIT, "--fl-loss", "ce"), 2, "the FL residual needs"),
    Case("template-steps", (*AUDIT, "--template-steps", "1,x"), 2, "--template-steps"),
    Case("unknown-option", (*AUDIT, "--frobnicate"), 2, "Usage:"),
    Case("hidden-states-no-hf", (*AUDIT, "--hidden-states"), 2, "--hidden-states"),
    Case("metrics-unknown", ("metrics", "{store}", "--metric", "bogus"), 2, "unknown metric"),
    Case("metrics-denominator", ("metrics", "{store}", "--denominator", "diag"), 2, "Usage:"),
    Case("metrics-ridge-neg", ("metrics", "{store}", "--ridge", "-1"), 2, "Usage:"),
    Case("metrics-pca-0", ("metrics", "{store}", "--pca", "0"), 2, "Usage:"),
    # ---------------------------------------------------------- destructive options (2)
    Case("overwrite-user-folder", (*AUDIT[:3], "{root}/notes", "--overwrite"), 2,
         "--overwrite refused"),
    Case("overwrite-source", (*AUDIT[:3], "{run}", "--overwrite"), 2, "--overwrite refused"),
    Case("overwrite-above-source", (*AUDIT[:3], "{root}", "--overwrite"), 2,
         "--overwrite refused"),
    Case("overwrite-a-link", (*AUDIT[:3], "{root}/link.zarr", "--overwrite"), 2,
         "--overwrite refused"),
    Case("overwrite-a-file", (*AUDIT[:3], "{root}/notes.txt", "--overwrite"), 2,
         "--overwrite refused"),
    Case("overwrite-plain-zarr", (*AUDIT[:3], "{root}/other.zarr", "--overwrite"), 2,
         "--overwrite refused"),
    Case("overwrite-empty-folder", (*AUDIT[:3], "{root}/plain", "--overwrite"), 2,
         "--overwrite refused"),
    Case("overwrite-probe-file", (*AUDIT[:3], "{run}/probe.npz", "--overwrite"), 2,
         "--overwrite refused"),
    Case("export-zarr-json", ("export", "{store}", "{store}/zarr.json"), 2, "export target"),
    Case("export-store", ("export", "{store}", "{store}"), 2, "export target"),
    Case("export-inside-store", ("export", "{store}", "{store}/gram/x.nc"), 2,
         "export target"),
    Case("export-other-store", ("export", "{store}", "{root}/other.zarr/x.nc"), 2,
         "export target"),
    Case("export-user-file", ("export", "{store}", "{root}/notes.txt"), 2, "export target"),
    Case("export-folder", ("export", "{store}", "{root}/notes"), 2, "export target"),
    Case("report-user-folder", ("report", "{store}", "--out", "{root}/notes"), 2,
         "report --out"),
    Case("report-in-store", ("report", "{store}", "--out", "{store}/figs"), 2, "report --out"),
    Case("report-a-file", ("report", "{store}", "--out", "{root}/notes.txt"), 2,
         "report --out"),
    Case("report-the-store", ("report", "{store}", "--out", "{store}"), 2, "report --out"),
    # ---------------------------------------------------------- input missing (3)
    Case("source-missing", ("audit", "{root}/nope", "--out", "{out}"), 3, "source"),
    Case("source-mistyped", ("audit", "{root}/runn/x", "--out", "{out}"), 3, "source"),
    Case("source-dot", ("audit", "./no-such-folder-here", "--out", "{out}"), 3,
         "source"),
    Case("source-tilde", ("audit", "~/no-such-folder-here", "--out", "{out}"), 3,
         "source"),
    Case("source-a-file", ("audit", "{run}/probe.npz", "--out", "{out}"), 3, "source"),
    Case("source-empty", ("audit", "{empty_run}", "--out", "{out}"), 3,
         "no checkpoints found"),
    Case("source-plain-notes", ("audit", "{root}/notes", "--out", "{out}"), 3,
         "no checkpoints found"),
    Case("model-missing-json", (*AUDIT, "--model", "{root}/nope.json"), 3, "model"),
    Case("model-missing-py", (*AUDIT, "--model", "{root}/nope.py:make"), 3, "model"),
    Case("probe-missing", (*AUDIT, "--probe", "{root}/nope.npz"), 3, "probe"),
    Case("probe-unknown-builtin", (*AUDIT, "--probe", "mnist-ish"), 3, "probe"),
    Case("export-missing-folder", ("export", "{store}", "{root}/missing/dir/out.nc"), 3,
         "export target '{root}/missing/dir/out.nc': the folder '{root}/missing/dir' does not "
         "exist; nothing was written"),
    Case("export-folder-is-a-file", ("export", "{store}", "{root}/notes.txt/out.nc"), 3,
         "export target '{root}/notes.txt/out.nc': the folder '{root}/notes.txt' is not a "
         "folder"),
    *[Case(f"{cmd}-missing-store", (cmd, "{root}/nope.zarr", *extra), 3, "store")
      for cmd, extra in (("show", ()), ("metrics", ()), ("export", ("{root}/o.nc",)),
                         ("report", ()))],
    Case("dangling-link-only", ("audit", "{dangling}", "--out", "{out}", "--steps", "7"), 4,
         "--steps '7'"),
    # ---------------------------------------------------------- data errors (4)
    *[Case(f"{cmd}-plain-folder", (cmd, "{root}/plain", *extra), 4, "'{root}/plain' is not")
      for cmd, extra in (("show", ()), ("metrics", ()), ("export", ("{root}/o.nc",)),
                         ("report", ("--out", "{root}/rep")))],
    *[Case(f"{cmd}-plain-zarr", (cmd, "{root}/other.zarr", *extra), 4,
           "'{root}/other.zarr' is a Zarr store but not an flq-audit store")
      for cmd, extra in (("show", ()), ("metrics", ()), ("export", ("{root}/o.nc",)),
                         ("report", ("--out", "{root}/rep")))],
    *[Case(f"{cmd}-store-is-a-file", (cmd, "{root}/notes.txt", *extra), 4, "'{root}/notes.txt' is not")
      for cmd, extra in (("show", ()), ("metrics", ()), ("export", ("{root}/o.nc",)),
                         ("report", ("--out", "{root}/rep")))],
    *[Case(f"spec-{name}", (*AUDIT, "--model", f"{{root}}/specs/{name}.json"), 4, first)
      for name, first in (
          ("negative_width", "{root}/specs/negative_width.json: widths must be positive"),
          ("zero_width", "{root}/specs/zero_width.json: widths must be positive"),
          ("widths_not_list", "{root}/specs/widths_not_list.json: invalid mlp spec"),
          ("unknown_type", "{root}/specs/unknown_type.json: unknown model type"),
          ("unknown_activation", "unknown activation 'swoosh'"),
          ("missing_in_features", "{root}/specs/missing_in_features.json: invalid mlp spec"),
          ("huge_width", "{root}/specs/huge_width.json: invalid mlp spec"),
          ("wrong_in_features", "probe '{run}/probe.npz': inputs of shape (6,) per sample do "
           "not fit the model, whose first layer 'layers.0' takes 7 input features"),
          ("bias_text", "{root}/specs/bias_text.json: bias must be true or false (a JSON "
           "boolean), got 'yes' (str)"),
          ("float_width", "{root}/specs/float_width.json: widths must be positive"),
          ("not_json", "model spec '{root}/specs/not_json.json' is not valid JSON"),
          ("array", "model spec '{root}/specs/array.json' must be a JSON object"),
          ("empty", "model spec '{root}/specs/empty.json' is not valid JSON"),
          ("latin1", "model spec '{root}/specs/latin1.json' is not valid JSON"))],
    Case("model-py-raises", (*AUDIT, "--model", "{root}/specs/nets.py:make"), 4,
         "model factory '{root}/specs/nets.py:make' raised RuntimeError('boom')"),
    Case("model-py-syntax", (*AUDIT, "--model", "{root}/specs/syntax.py:make"), 4,
         "importing '{root}/specs/syntax.py' raised SyntaxError"),
    Case("model-py-no-function", (*AUDIT, "--model", "{root}/specs/nets.py:other"), 4,
         "model factory '{root}/specs/nets.py:other'"),
    *[Case(f"probe-{name}", (*AUDIT, "--probe", f"{{root}}/probes/{name}"), 4, first)
      for name, first in (
          ("no_targets.npz", "probe file '{root}/probes/no_targets.npz' must hold arrays"),
          ("wrong_features.npz", "probe '{root}/probes/wrong_features.npz': inputs of shape "
           "(5,) per sample do not fit the model, whose first layer 'layers.0' takes 6 input "
           "features"),
          ("length_mismatch.npz", "probe 'length_mismatch.npz': 10 inputs but 7 targets"),
          ("empty.npz", "probe 'empty.npz': inputs must be (N, ...) with N > 0"),
          ("label_too_big.npz", "probe 'label_too_big.npz': labels must lie in [0, 3)"),
          ("nan_inputs.npz", "probe 'nan_inputs.npz': 10 input sample(s) contain NaN"),
          ("garbage.npz", "cannot read probe file '{root}/probes/garbage.npz'"),
          ("garbage.safetensors", "cannot read probe file '{root}/probes/garbage.safetensors'"))],
    Case("probe-keys-missing", (*AUDIT, "--probe-keys", "foo,bar"), 4,
         "probe file '{run}/probe.npz' holds no array 'foo' or 'bar' (--probe-keys foo,bar); "
         "it holds ['inputs', 'num_classes', 'targets']"),
    Case("layers-no-match", (*AUDIT, "--layers", "nothing.*"), 4,
         "layer pattern 'nothing.*' matches no weight layer"),
    Case("foreign-store", ("audit", "{wrong_shapes}", "--out", "{store}", "--steps", "0"), 4,
         "store"),
    Case("resume-a-plain-zarr", (*AUDIT[:3], "{root}/other.zarr"), 4,
         "'{root}/other.zarr' exists and is not an flq-audit store"),
    Case("resume-a-user-folder", (*AUDIT[:3], "{root}/notes"), 4,
         "'{root}/notes' exists and is not an flq-audit store"),
    Case("huge-step-number", ("audit", "{huge_step}", "--out", "{out}"), 4,
         "checkpoint 'step_99999999999999999999999999.safetensors': step 999"),
    Case("step-clash", ("audit", "{clash}", "--out", "{out}"), 4,
         "step 10 is claimed by several checkpoints"),
    Case("wrong-shapes", ("audit", "{wrong_shapes}", "--out", "{out}", "--steps", "5"),
         5, "warning: step 5 failed"),
]
