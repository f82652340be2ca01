"""One harness that checks every registered metric the same way (as torchmetrics'
``MetricTester``): the lazy store path over several chunkings equals an independent
computation passed in per metric, undone steps are NaN, every output has its attributes,
and the streaming object over several chunkings and merge orders equals the one-shot kernel.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any

import numpy as np
import xarray as xr

from flq_audit.metrics import MetricSpec, StreamingMetric
from flq_audit.metrics._graph import GroupContext, group_dataset

#: (h (n × w), y (n × k), gram (w × w), options) → {output name: value}, computed without the
#: package's kernels.
Reference = Callable[[np.ndarray, np.ndarray, np.ndarray, Any], dict[str, Any]]

STEPS = np.array([0, 10, 20, 30], dtype=np.int64)
DONE = np.array([True, False, True, False])  # step 30 holds finite data but is not done
STORE_CHUNKINGS: tuple[dict[str, int] | None, ...] = (
    {"step": 1, "layer": 1, "sample": 7}, {"sample": 5}, None)
SAMPLE_SPLITS: tuple[tuple[int, ...], ...] = ((), (7, 19), (1, 2, 3, 30))


@dataclass
class StoreLike:
    """A hand-built Dataset shaped like an audit store (NaN-padded activations and Grams)."""

    ds: xr.Dataset
    acts: np.ndarray
    grams: np.ndarray
    y: np.ndarray
    widths: tuple[int, ...]


def store_like(rng: np.random.Generator, *, n: int = 36, widths: Sequence[int] = (5, 3, 8),
               classes: int = 4, absent: int | None = None, kind: str | None = "classes",
               ) -> StoreLike:
    """Class-structured activations; class ``absent`` gets no sample; ``kind=None`` leaves
    the targets without their ``kind`` attribute."""
    f = max(widths)
    present = [c for c in range(classes) if c != absent]
    labels = np.array(present)[np.arange(n) % len(present)]
    y = np.eye(classes)[labels]
    acts = np.full((len(STEPS), len(widths), n, f), np.nan)
    grams = np.full((len(STEPS), len(widths), f, f), np.nan)
    for s in range(len(STEPS)):
        if s == 1:
            continue  # never written: all NaN, like the store template
        for j, w in enumerate(widths):
            acts[s, j, :, :w] = (y @ rng.normal(size=(classes, w)) * (s + 1)
                                 + rng.normal(size=(n, w)) + 0.3 * s)
            weight = rng.normal(size=(w + 1, w))
            grams[s, j, :w, :w] = weight.T @ weight
    ds = xr.Dataset(
        {"activations": (("step", "layer", "sample", "feature"), acts),
         "gram": (("step", "layer", "gram_i", "gram_j"), grams),
         "targets": (("sample", "target"), y, {} if kind is None else {"kind": kind}),
         "done": (("step",), DONE)},
        coords={"step": STEPS, "layer": np.asarray([f"layer{j}" for j in range(len(widths))],
                                                  dtype=object),
                "width": ("layer", np.asarray(widths, dtype=np.int64)),
                "gram_width": ("layer", np.asarray(widths, dtype=np.int64)),
                "sample": np.arange(n, dtype=np.int64)},
        attrs={"Conventions": "CF-1.8 flq-audit-1"},  # what marks a folder as a store
    )
    return StoreLike(ds, acts, grams, y, tuple(widths))


@dataclass
class MetricTester:
    """Checks one spec against an independent ``reference``."""

    spec: MetricSpec
    reference: Reference
    options: Any = None
    rtol: float = 1e-9
    atol: float = 1e-10
    seed: int = 0
    n: int = 36
    widths: tuple[int, ...] = (5, 3, 8)
    store: StoreLike = field(init=False)

    def __post_init__(self) -> None:
        self.store = store_like(np.random.default_rng(self.seed), n=self.n, widths=self.widths)
        if self.options is None:
            self.options = self.spec.make_options({})

    def lazy(self, chunks: dict[str, int] | None) -> xr.Dataset:
        ds = self.store.ds if chunks is None else self.store.ds.chunk(chunks)
        out = group_dataset(self.spec, GroupContext(ds, self.options))
        if chunks is not None:
            first = next(iter(self.spec.outputs))
            assert out[first].chunks is not None, "lazy until computed"
        return out.compute()

    def check_store_path(self) -> None:
        """Every chunking equals the reference; undone steps NaN; attributes present."""
        st = self.store
        for chunks in STORE_CHUNKINGS:
            out = self.lazy(chunks)
            for name, output in self.spec.outputs.items():
                var = out[name]
                assert var.dims[:2] == ("step", "layer"), (name, var.dims)
                assert var.attrs.get("long_name") == output.long_name, name
                if output.reference is not None:
                    assert var.attrs.get("reference") == output.reference, name
            for s in range(len(STEPS)):
                for j, w in enumerate(st.widths):
                    row = out.isel(step=s, layer=j)
                    if not DONE[s]:
                        for name in self.spec.outputs:
                            assert np.isnan(row[name].values).all(), (chunks, s, j, name)
                        continue
                    expected = self.reference(st.acts[s, j, :, :w], st.y,
                                              st.grams[s, j, :w, :w], self.options)
                    for name, value in expected.items():
                        np.testing.assert_allclose(
                            row[name].values, value, rtol=self.rtol, atol=self.atol,
                            err_msg=f"{self.spec.group}.{name} step {s} layer {j} {chunks}")

    def check_streaming(self) -> None:
        """Streaming over several sample splits and merge orders equals the one-shot kernel."""
        if self.spec.kernel is None or self.spec.needs - {"moments", "gram"}:
            return
        st = self.store
        s, j = 2, 2
        w = st.widths[j]
        h, gram = st.acts[s, j, :, :w], st.grams[s, j, :w, :w]
        gram_arg = gram if "gram" in self.spec.needs else None
        one_shot = StreamingMetric(self.spec, self.options, gram=gram_arg).update(
            h, st.y).compute_all()
        for cuts in SAMPLE_SPLITS:
            bounds = [0, *cuts, len(h)]
            parts = [StreamingMetric(self.spec, self.options, gram=gram_arg).update(
                h[a:b], st.y[a:b]) for a, b in pairwise(bounds)]
            for order in (list(range(len(parts))), list(reversed(range(len(parts))))):
                merged = StreamingMetric(self.spec, self.options, gram=gram_arg)
                for i in order:
                    merged.merge(parts[i])
                for name, value in merged.compute_all().items():
                    np.testing.assert_allclose(value, one_shot[name], rtol=1e-12, atol=1e-12,
                                               err_msg=f"{self.spec.group}.{name} {cuts}")

    def run(self) -> None:
        self.check_store_path()
        self.check_streaming()
