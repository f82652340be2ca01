"""``ds.flq``: the store's vocabulary on any Dataset opened from an flq-audit store.

Registered on ``import flq_audit`` (torch-free), so ``flq_audit.store.open_dataset(path)``
and a plain ``xr.open_zarr(path)`` both have it::

    ds.flq.activations(step=10, layer="layers.1")   # (sample, feature), no NaN padding
    ds.flq.metric("target_linearity", pca=256)      # selected by its stored parameters
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import xarray as xr


@dataclass(frozen=True)
class StepRecord:
    step: int
    label: str
    done: bool
    error: str | None


@dataclass(frozen=True)
class LayerRecord:
    name: str
    kind: str
    width: int
    gram_width: int
    #: How the store keeps the layer's Gram (``dense``, ``factor``, ``spectrum``, ``none``).
    gram_form: str = "dense"


@dataclass(frozen=True)
class StoreSummary:
    """What ``flq-audit show`` prints about a store, as a plain record.

    ``metrics`` are the stored metric variables whose group is complete (stamped);
    ``stale_metrics`` those of them computed from other done steps than the store's now;
    ``incomplete_metrics`` those written without their stamp (an interrupted computation);
    ``stale_groups`` the stale metric groups (by tag) with ``[steps computed on, done steps
    now]``.
    """

    store: str | None
    source: str | None
    flq_audit_version: str | None
    probe: dict[str, Any]
    capture_config: dict[str, Any]
    steps: list[StepRecord]
    layers: list[LayerRecord]
    n_samples: int
    bytes_on_disk: int | None
    metrics: list[str] = field(default_factory=list)
    stale_metrics: list[str] = field(default_factory=list)
    incomplete_metrics: list[str] = field(default_factory=list)
    stale_groups: dict[str, list[int]] = field(default_factory=dict)

    @property
    def n_done(self) -> int:
        return sum(s.done for s in self.steps)

    @property
    def n_failed(self) -> int:
        return sum(bool(s.error) for s in self.steps)

    def to_dict(self) -> dict[str, Any]:
        """The summary as JSON-ready built-in types (what ``show --json`` prints)."""
        return asdict(self)


@xr.register_dataset_accessor("flq")
class FlqAccessor:
    """Unpadded activations and Grams, metrics selected by parameters, a summary."""

    def __init__(self, ds: xr.Dataset) -> None:
        self._ds = ds

    def activations(self, step: int, layer: str) -> xr.DataArray:
        """One layer's features at one step, ``(sample, feature)``, sliced to its width."""
        ds = self._ds
        if "activations" not in ds:
            raise KeyError("this store holds no activations (a weights-only audit)")
        width = int(ds["width"].sel(layer=layer))
        return ds["activations"].sel(step=step, layer=layer).isel(feature=slice(0, width))

    def gram_form(self, layer: str) -> str:
        """How the store keeps the layer's Gram: ``dense``, ``factor``, ``spectrum``, ``none``."""
        from flq_audit._gram_forms import stored_forms

        names = [str(name) for name in self._ds["layer"].values]
        return stored_forms(self._ds)[names.index(str(layer))]

    def gram(self, step: int, layer: str) -> xr.DataArray:
        """The weight Gram ``WᵀW`` of one layer at one step, ``(gram_i, gram_j)`` sliced to
        ``gram_width``, whatever its stored form: a factor ``W`` gives ``WᵀW`` in float64,
        lazily on a dask-backed store."""
        from flq_audit._gram_forms import FACTOR_ROW, GRAM_FACTOR, GRAM_ROWS

        ds = self._ds
        width = int(ds["gram_width"].sel(layer=layer))
        form = self.gram_form(layer)
        if form == "dense":
            return ds["gram"].sel(step=step, layer=layer).isel(gram_i=slice(0, width),
                                                               gram_j=slice(0, width))
        if form != "factor":
            raise KeyError(f"layer {layer!r}: this store keeps "
                           + ("only the eigenvalues of its Gram (--grams spectrum)"
                              if form == "spectrum" else "no Gram (--grams none)")
                           + "; audit with --grams compact or full to keep WᵀW")
        rows = int(ds[GRAM_ROWS].sel(layer=layer))
        factor = ds[GRAM_FACTOR].sel(step=step, layer=layer).isel(
            {FACTOR_ROW: slice(0, rows), "gram_j": slice(0, width)}).astype("float64")
        gram = xr.dot(factor.rename(gram_j="gram_i"), factor, dim=FACTOR_ROW)
        return gram.transpose("gram_i", "gram_j").assign_attrs(ds[GRAM_FACTOR].attrs)

    @property
    def done_steps(self) -> list[int]:
        """Steps whose data is complete."""
        done = self._ds["done"].values.astype(bool)
        return [int(s) for s in self._ds["step"].values[done]]

    def metric(self, name: str, *, tl: object | None = None, allow_stale: bool = False,
               **params: Any) -> xr.DataArray:
        """A stored metric output (``target_linearity``, ``t90``, ``surrogate``…) computed with
        the given parameters (the group's defaults for those not given; ``tl`` may be a
        :class:`~flq_audit.metrics.TLOptions`). Refuses a group whose write was interrupted,
        and a stale one (computed from other done steps than the store's now) unless
        ``allow_stale``: its values then carry ``flq_state="stale"`` and the steps they were
        computed on (``flq_computed_on``)."""
        from flq_audit.errors import MetricError
        from flq_audit.metrics import registry
        from flq_audit.metrics._options import options_attrs
        from flq_audit.metrics._stamp import TAG_ATTR, find_metric, is_complete, stale_steps

        if tl is not None:
            params = {**options_attrs(tl), **params}
            if params.get("pca") == -1:
                params["pca"] = None
        options = {group: spec.options for group, spec in registry().items()}
        found = find_metric(self._ds, name, params, options)
        if len(found) != 1:
            stored = sorted({str(v.attrs[TAG_ATTR]) for v in self._ds.data_vars.values()
                             if TAG_ATTR in v.attrs})
            what = "no" if not found else f"{len(found)} ({found})"
            raise MetricError(f"{what} stored metric {name!r} with parameters {params}; "
                              f"stored parameter sets: {stored}",
                              hint="Compute it with `flq-audit metrics STORE --metric GROUP`.")
        var = self._ds[found[0]]
        tag = str(var.attrs.get(TAG_ATTR))
        if not is_complete(self._ds, tag):
            raise MetricError(f"metric {name!r} ({tag}) is incomplete: its computation was "
                              "interrupted", hint="Rerun `flq-audit metrics STORE`.")
        computed_on = stale_steps(self._ds, tag)
        if computed_on is None:
            return var.rename(name)
        if not allow_stale:
            raise MetricError(
                f"metric {name!r} ({tag}) is stale: computed on {len(computed_on)} of the "
                f"{len(self.done_steps)} done steps", hint="Run `flq-audit metrics STORE` to "
                "bring it up to date, or pass allow_stale=True to read it flagged as stale.")
        return var.rename(name).assign_attrs(flq_state="stale", flq_computed_on=computed_on)

    def summary(self) -> StoreSummary:
        """Provenance, steps, layers, size on disk and stored metrics of the store."""
        from flq_audit._stamps import metric_status, stale_groups

        ds = self._ds
        source = ds.encoding.get("source")
        errors = ([str(e) for e in ds["error"].values] if "error" in ds
                  else [""] * ds.sizes["step"])
        labels = ([str(v) for v in ds["label"].values] if "label" in ds
                  else [str(int(s)) for s in ds["step"].values])
        steps = [StepRecord(int(s), lab, bool(d), e or None) for s, lab, d, e in zip(
            ds["step"].values, labels, ds["done"].values.astype(bool), errors, strict=True)]
        kinds = ds["layer_kind"].values if "layer_kind" in ds else [""] * ds.sizes["layer"]
        from flq_audit._gram_forms import stored_forms

        layers = [LayerRecord(str(n), str(k), int(w), int(g), f) for n, k, w, g, f in zip(
            ds["layer"].values, kinds, ds["width"].values,
            ds["gram_width"].values if "gram_width" in ds else ds["width"].values,
            stored_forms(ds), strict=True)]
        status = metric_status(ds)
        tagged = [str(name) for name, var in ds.data_vars.items() if "flq_metric" in var.attrs]
        return StoreSummary(
            store=source, source=ds.attrs.get("source"),
            flq_audit_version=ds.attrs.get("flq_audit_version"),
            probe=json.loads(ds.attrs.get("probe", "null")) or {},
            capture_config=json.loads(ds.attrs.get("capture_config", "{}")),
            steps=steps, layers=layers, n_samples=int(ds.sizes.get("sample", 0)),
            bytes_on_disk=_bytes_on_disk(ds),
            metrics=[n for n in tagged if status.get(n) != "incomplete"],
            stale_metrics=sorted(n for n, s in status.items() if s == "stale"),
            incomplete_metrics=sorted(n for n, s in status.items() if s == "incomplete"),
            stale_groups={tag: list(counts) for tag, counts in stale_groups(ds).items()},
        )


def _bytes_on_disk(ds: xr.Dataset) -> int | None:
    """Bytes under the store ``ds`` was opened from: its location (local or URL, recorded by
    :func:`flq_audit.store.open_dataset`), else a local folder named by its source; None for
    a Dataset opened from elsewhere."""
    from flq_audit.store import LOCATION_ENCODING

    location = ds.encoding.get(LOCATION_ENCODING)
    if location is not None:
        return int(location.size_bytes())
    source = ds.encoding.get("source")
    if source and Path(source).is_dir():
        return sum(f.stat().st_size for f in Path(source).rglob("*") if f.is_file())
    return None


__all__ = ["FlqAccessor", "LayerRecord", "StepRecord", "StoreSummary"]
