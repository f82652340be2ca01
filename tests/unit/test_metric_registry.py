"""Every registered per-block metric checked the same way by the shared MetricTester, the
streaming objects against the one-shot kernels, and the registry's rules."""

from __future__ import annotations

import re
import subprocess
import sys
from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest

from flq_audit.errors import OptionError
from flq_audit.metrics import (
    MetricSpec,
    Output,
    Surrogate,
    TargetLinearity,
    TLOptions,
    register_metric,
    registry,
    surrogate,
    target_linearity,
)
from flq_audit.metrics._engine import ordered_groups
from tests._helpers.metric_tester import MetricTester


def _tl_reference(h, y, gram, options: TLOptions) -> dict[str, float]:
    """Least squares on the centred targets (no PCA, no ridge: the definition)."""
    yc = y - y.mean(axis=0)
    fit = np.linalg.lstsq(h, yc, rcond=None)[0]
    rank = np.linalg.matrix_rank(h)
    tl = 1.0 - ((yc - h @ fit) ** 2).sum() / (yc ** 2).sum()
    return {"target_linearity": tl, "target_linearity_n_samples": len(h),
            "target_linearity_n_features": h.shape[1], "target_linearity_rank": rank,
            "target_linearity_chance_floor": rank / len(h)}


def _surrogate_reference(h, y, gram, options) -> dict[str, float]:
    """From the pre-activation products ``ZZᵀ = H G Hᵀ`` (n × n), as the paper writes them."""
    yc = y - y.mean(axis=0)
    zz = h @ gram @ h.T
    s = np.trace(yc.T @ zz @ yc)
    return {"surrogate": s, "surrogate_per_class": s / y.shape[1], "norm": np.trace(zz),
            "alignment": s / (np.linalg.norm(zz) * np.linalg.norm(yc.T @ yc))}


def _gram_reference(h, y, gram, options) -> dict[str, object]:
    """Singular values of the Gram (an SVD, not the kernel's eigvalsh)."""
    values = np.linalg.svd(gram, compute_uv=False)
    top = np.full(8, np.nan)
    top[: min(8, values.size)] = values[:8]
    p = values / values.sum()
    return {"gram_top_eigenvalues": top, "gram_effective_rank": np.exp(-(p * np.log(p)).sum()),
            "gram_stable_rank": np.trace(gram) / values[0]}


def _nc_reference(h, y, gram, options) -> dict[str, float]:
    """Papyan et al.'s definitions from the samples (class means and covariances)."""
    labels = y.argmax(axis=1)
    classes = np.unique(labels)
    means = np.stack([h[labels == c].mean(axis=0) for c in classes])
    centred = means - h.mean(axis=0)
    within = sum(((h[labels == c] - means[i]).T @ (h[labels == c] - means[i]))
                 for i, c in enumerate(classes)) / len(h)
    between = centred.T @ centred / len(classes)
    norms = np.linalg.norm(centred, axis=1)
    cos = (centred @ centred.T) / np.outer(norms, norms)
    c = len(classes)
    k = centred @ centred.T
    etf = (np.eye(c) - 1 / c) / np.sqrt(c - 1)
    return {"nc1": np.trace(within @ np.linalg.pinv(between, rcond=1e-10)) / c,
            "nc2_equinorm": norms.std() / norms.mean(),
            "nc2_equiangularity": np.abs(cos[~np.eye(c, dtype=bool)] + 1 / (c - 1)).mean(),
            "nc2_etf_error": np.linalg.norm(k / np.linalg.norm(k) - etf), "nc_n_classes": c}


REFERENCES = {"tl": _tl_reference, "surrogate": _surrogate_reference, "gram": _gram_reference,
              "nc": _nc_reference}


@pytest.mark.parametrize("group", [g for g, spec in registry().items() if spec.kernel])
def test_every_per_block_metric_passes_the_tester(group):
    assert group in REFERENCES, f"metric {group!r} has no independent reference in this test"
    MetricTester(registry()[group], REFERENCES[group], rtol=1e-8).run()


def test_tl_with_ridge_passes_the_tester():
    def ridge_reference(h, y, gram, options):
        yc = y - y.mean(axis=0)
        fit = np.linalg.solve(h.T @ h + options.ridge * np.eye(h.shape[1]), h.T @ yc)
        return {"target_linearity": 1 - ((yc - h @ fit) ** 2).sum() / (yc ** 2).sum()}

    MetricTester(registry()["tl"], ridge_reference, options=TLOptions(ridge=0.7)).run()


@pytest.mark.parametrize("cuts", [(), (5, 40), (1, 2, 3, 50, 99)])
def test_streaming_target_linearity_equals_the_one_shot_kernel(cuts):
    rng = np.random.default_rng(7)
    y = np.eye(3)[rng.integers(0, 3, 120)]
    h = y @ rng.normal(size=(3, 6)) + rng.normal(size=(120, 6))
    parts = [TargetLinearity().update(h[a:b], y[a:b]) for a, b in pairwise([0, *cuts, 120])]
    for order in (parts, parts[::-1], parts[1::2] + parts[::2]):
        merged = TargetLinearity()
        for part in order:
            merged.merge(part)
        assert merged.compute() == pytest.approx(target_linearity(h, y), abs=1e-12)
    ridge = TargetLinearity(ridge=0.3).update(h[:60], y[:60]).update(h[60:], y[60:])
    assert ridge.compute() == pytest.approx(target_linearity(h, y, ridge=0.3), abs=1e-12)


@pytest.mark.parametrize("cuts", [(), (10, 11), (3, 30, 60, 90)])
def test_streaming_surrogate_equals_the_one_shot_kernel(cuts):
    rng = np.random.default_rng(8)
    y = np.eye(4)[rng.integers(0, 4, 100)]
    h, w = rng.normal(size=(100, 5)), rng.normal(size=(7, 5))
    parts = [Surrogate(w).update(h[a:b], y[a:b]) for a, b in pairwise([0, *cuts, 100])]
    expected = surrogate(h, w, y)
    for order in (parts, parts[::-1]):
        merged = Surrogate(gram=w.T @ w)
        for part in order:
            merged.merge(part)
        got = merged.compute()
        for name in ("surrogate", "surrogate_per_class", "norm", "alignment"):
            assert getattr(got, name) == pytest.approx(getattr(expected, name), rel=1e-12,
                                                       abs=1e-12), name


def test_options_validate_with_the_allowed_values():
    with pytest.raises(OptionError, match="column"):
        TLOptions(denominator="rows")  # type: ignore[arg-type]
    with pytest.raises(OptionError, match=">= 0"):
        TLOptions(ridge=-1)
    with pytest.raises(OptionError, match=">= 1"):
        TLOptions(pca=0)
    assert TLOptions().suffix == ""
    assert TLOptions(pca=8, pca_threshold=16, ridge=0.1, denominator="row").suffix == (
        "__pca8t16_ridge0.1_rowden")


def test_groups_are_ordered_by_their_needs_and_names_are_unique():
    specs = registry()
    assert list(specs)[:5] == ["tl", "surrogate", "gram", "dynamics", "nc"]
    order = ordered_groups(["dynamics", "gram"], specs)
    assert order.index("tl") < order.index("dynamics")
    spec = MetricSpec("tl", frozenset({"moments"}), {"x": Output("x")}, kernel=lambda b, o: (1,))
    with pytest.raises(OptionError, match="already registered"):
        register_metric(spec)
    with pytest.raises(OptionError, match="needs"):
        register_metric(MetricSpec("odd", frozenset({"weights_of_the_moon"}),
                                   {"x": Output("x")}, kernel=lambda b, o: (1,)))


def _anchors(page: Path) -> set[str]:
    """GitHub-style anchors of a markdown page's headings."""
    heads = [line.lstrip("#").strip() for line in page.read_text().splitlines()
             if line.startswith("#")]
    return {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in heads}


def test_attributes_cite_shipped_docs_only():
    root = Path(__file__).resolve().parents[2]
    cited = set()
    for group, spec in registry().items():
        if not spec.kernel:
            continue
        out = MetricTester(spec, REFERENCES[group]).lazy(None)
        for name, var in out.data_vars.items():
            reference = str(var.attrs.get("reference", ""))
            assert "paper-notes" not in reference, (group, name)
            cited.update(re.findall(r"(docs/[\w\-]+\.md)#([\w\-]+)", reference))
    assert {page for page, _ in cited} == {"docs/concepts.md"}
    for page, anchor in cited:
        assert anchor in _anchors(root / page), f"{page}#{anchor} is not a heading"


def test_metrics_path_is_torch_free():
    code = ("import sys, flq_audit.metrics, flq_audit.reading; "
            "flq_audit.metrics.registry(); print(sorted(m for m in ('torch', 'transformers') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
