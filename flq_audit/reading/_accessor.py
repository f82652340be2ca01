"""``ds.flq``: the store's vocabulary on any Dataset opened from an flq-audit store.

Registered on ``import flq_audit`` (torch-free), so ``flq_audit.store.open_dataset(path)``
and a plain ``xr.open_zarr(path)`` both have it::

    ds.flq.activations(step=10, layer="layers.1")   # (sample, feature), no NaN padding
    ds.flq.metric("target_linearity", pca=256)      # selected by its stored parameters
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import xarray as xr

from flq_audit.store._summary import LayerRecord, StepRecord, StoreSummary, summarize


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
        return summarize(self._ds, store=self._ds.encoding.get("source"),
                         bytes_on_disk=_bytes_on_disk(self._ds))


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
