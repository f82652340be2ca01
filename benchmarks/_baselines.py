"""The hand-written baselines of ``benchmarks/run.py``: what a user would write without flq-audit.

Each is a small, standard script, run in a fresh process as
``python benchmarks/_baselines.py NAME ARGS...``; none imports flq_audit. This module's top
level imports the standard library only, so each baseline pays for exactly the imports it
needs.

- ``hand-loop digits RUN OUT``: the digits MLP written out by hand; per checkpoint,
  ``load_state_dict`` + forward pre-hooks on every ``nn.Linear`` + a forward of the probe in
  batches of 512 under ``torch.no_grad()``, then ``np.save`` of each layer's inputs and of its
  float64 Gram WᵀW.
- ``hand-loop neox RUN OUT --texts T``: the same for ``checkpoint-N/`` folders of a
  transformers model (``from_pretrained``, the texts tokenized once, the last token of each
  text kept), the forward stopped once the last hooked layer's input is captured (the audit
  never computes that layer's output either).
- ``lstsq STORE``: the Target Linearity of every done (step, layer) from the stored values
  with ``numpy.linalg.lstsq`` (no intercept, column-centred targets: docs/concepts.md); prints
  ``{"cpu_s": ..., "tl": [[...] per step]}`` with the CPU time of the reads and fits.
- ``zarr-write STORE DEST``: every numeric per-step array of STORE (activations, Grams ...)
  written into a new zarr store with the same shape, chunks, codecs and fill value (read from
  STORE's array metadata), one ``array[step] = values`` per array and step (zarr splits it
  into chunks); prints the CPU time of the writes and the bytes written (the data is read
  before the clock starts).
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import resource
import sys
from pathlib import Path


def cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# ---------------------------------------------------------------- hooks + np.save
class StopForward(Exception):
    """Raised by the last hook: nothing after the last captured input is needed."""


def hook_linears(model, rows_of, stop_last: bool) -> tuple[dict, dict]:
    """A forward pre-hook on every ``nn.Linear`` collecting ``rows_of(input)`` as numpy."""
    from torch import nn

    linears = {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    captured: dict[str, list] = {n: [] for n in linears}
    last = list(linears)[-1]

    def make(name):
        def hook(module, args):
            captured[name].append(rows_of(args[0].detach()).float().numpy().copy())
            if stop_last and name == last:
                raise StopForward
        return hook

    for name, module in linears.items():
        module.register_forward_pre_hook(make(name))
    return linears, captured


def save_step(out: Path, step: str, linears: dict, captured: dict) -> None:
    import numpy as np

    for name, module in linears.items():
        w = module.weight.detach().double()
        np.save(out / f"{step}-{name}-gram.npy", (w.t() @ w).numpy())
        np.save(out / f"{step}-{name}-acts.npy", np.concatenate(captured[name]))


def digits_loop(run: Path, out: Path) -> None:
    import numpy as np
    import torch
    from safetensors.torch import load_file
    from torch import nn

    spec = json.loads((run / "model_spec.json").read_text())
    sizes = [spec["in_features"], *spec["widths"], spec["out_features"]]

    class MLP(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in itertools.pairwise(sizes))

        def forward(self, x):
            for layer in self.layers[:-1]:
                x = nn.functional.gelu(layer(x))
            return self.layers[-1](x)

    model = MLP().eval()
    inputs = torch.from_numpy(np.load(run / "probe.npz")["inputs"])
    files = sorted(run.glob("step_*.safetensors"), key=lambda p: int(p.stem[5:]))
    linears, captured = hook_linears(model, lambda x: x, stop_last=False)
    for file in files:
        model.load_state_dict(load_file(str(file)))
        for rows in captured.values():
            rows.clear()
        with torch.no_grad():
            for first in range(0, len(inputs), 512):
                model(inputs[first:first + 512])
        save_step(out, file.stem, linears, captured)


def neox_loop(run: Path, out: Path, texts_path: Path) -> None:
    import torch
    import transformers

    texts = [json.loads(line)["text"] for line in texts_path.open()]
    folders = sorted(run.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(folders[0]))
    batch = tokenizer(texts, padding=True, truncation=True, max_length=128, return_tensors="pt")
    last = batch["attention_mask"].sum(1) - 1
    index = torch.arange(len(texts))
    for folder in folders:
        model = transformers.AutoModelForCausalLM.from_pretrained(
            str(folder), dtype=torch.float32).eval()
        linears, captured = hook_linears(model, lambda x: x[index, last], stop_last=True)
        with torch.no_grad(), contextlib.suppress(StopForward):
            model(**batch, use_cache=False)
        save_step(out, folder.name, linears, captured)
        del model, linears, captured


# ---------------------------------------------------------------- lstsq on the stored values
def lstsq_tl(store: Path) -> dict[str, object]:
    import numpy as np
    import zarr

    start = cpu_s()
    group = zarr.open_group(str(store), mode="r")
    done = np.asarray(group["done"][:])
    widths = np.asarray(group["width"][:])
    y = np.asarray(group["targets"][:], dtype=np.float64)
    yc = y - y.mean(axis=0)
    total = float((yc**2).sum())
    acts = group["activations"]
    tl = np.full((len(done), len(widths)), np.nan)
    for step in np.flatnonzero(done):
        for layer, width in enumerate(widths):
            h = np.asarray(acts[step, layer, :, :width], dtype=np.float64)
            coef = np.linalg.lstsq(h, yc, rcond=None)[0]
            tl[step, layer] = 1.0 - float(((yc - h @ coef) ** 2).sum()) / total
    return {"cpu_s": cpu_s() - start, "tl": [[None if np.isnan(v) else float(v) for v in row]
                                             for row in tl]}


# ---------------------------------------------------------------- a plain zarr write loop
def step_arrays(group) -> dict:
    """The numeric arrays of a store that a step writes: first axis ``step``, two or more."""
    import numpy as np

    return {name: array for name, array in group.arrays()
            if (array.metadata.dimension_names or ("",))[0] == "step" and array.ndim >= 2
            and np.dtype(array.dtype).kind in "fiub"}


def zarr_write(store: Path, dest: Path) -> dict[str, object]:
    import numpy as np
    import zarr

    source = step_arrays(zarr.open_group(str(store), mode="r"))
    data = {name: np.asarray(array[:]) for name, array in source.items()}
    out = zarr.open_group(str(dest), mode="w")
    targets = {name: out.create_array(
        name, shape=array.shape, dtype=array.dtype, chunks=array.chunks,
        fill_value=array.fill_value, compressors=array.compressors, filters=array.filters,
        serializer=array.serializer) for name, array in source.items()}
    start = cpu_s()
    for step in range(len(data[next(iter(data))])):
        for name, target in targets.items():
            target[step] = data[name][step]
    return {"cpu_s": cpu_s() - start, "bytes": sum(a.nbytes for a in data.values()),
            "arrays": {n: {"chunks": list(a.chunks), "compressors": [str(c) for c in a.compressors]}
                       for n, a in source.items()}}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="name", required=True)
    loop = sub.add_parser("hand-loop")
    loop.add_argument("kind", choices=["digits", "neox"])
    loop.add_argument("run", type=Path)
    loop.add_argument("out", type=Path)
    loop.add_argument("--texts", type=Path)
    loop.add_argument("--threads", type=int, default=1)
    fit = sub.add_parser("lstsq")
    fit.add_argument("store", type=Path)
    write = sub.add_parser("zarr-write")
    write.add_argument("store", type=Path)
    write.add_argument("dest", type=Path)
    args = parser.parse_args(argv)
    if args.name == "hand-loop":
        import torch

        torch.set_num_threads(args.threads)
        args.out.mkdir(parents=True, exist_ok=True)
        if args.kind == "digits":
            digits_loop(args.run, args.out)
        else:
            neox_loop(args.run, args.out, args.texts)
    elif args.name == "lstsq":
        print(json.dumps(lstsq_tl(args.store)))
    else:
        print(json.dumps(zarr_write(args.store, args.dest)))


if __name__ == "__main__":
    sys.exit(main())
