"""A store's summary (what ``flq-audit show`` prints), from a Dataset or from zarr alone.

:func:`summarize` reads the few variables and attributes a summary needs through the part of
``xarray.Dataset``'s interface it uses (``ds[name].values``, ``ds.attrs``, ``ds.data_vars``,
``ds.coords``, ``ds.sizes``). ``ds.flq.summary()`` passes a Dataset; :func:`read_summary` passes
a :class:`ZarrView` of the store's group, so that ``show`` opens the store with zarr only and
pays for neither xarray's nor pandas' import.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from flq_audit._gram_forms import stored_forms
from flq_audit._stamps import metric_status, stale_groups
from flq_audit._tags import stored_tags
from flq_audit.store._location import StoreLocation


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
    #: The run's ``--tag`` values (:mod:`flq_audit._tags`).
    tags: dict[str, Any] = field(default_factory=dict)

    @property
    def n_done(self) -> int:
        return sum(s.done for s in self.steps)

    @property
    def n_failed(self) -> int:
        return sum(bool(s.error) for s in self.steps)

    def to_dict(self) -> dict[str, Any]:
        """The summary as JSON-ready built-in types (what ``show --json`` prints)."""
        return asdict(self)


def summarize(ds: Any, *, store: str | None, bytes_on_disk: int | None) -> StoreSummary:
    """The summary of a store's Dataset ``ds`` (an ``xarray.Dataset`` or a :class:`ZarrView`)."""
    errors = ([str(e) for e in ds["error"].values] if "error" in ds
              else [""] * ds.sizes["step"])
    labels = ([str(v) for v in ds["label"].values] if "label" in ds
              else [str(int(s)) for s in ds["step"].values])
    steps = [StepRecord(int(s), lab, bool(d), e or None) for s, lab, d, e in zip(
        ds["step"].values, labels, np.asarray(ds["done"].values).astype(bool), errors,
        strict=True)]
    kinds = ds["layer_kind"].values if "layer_kind" in ds else [""] * ds.sizes["layer"]
    layers = [LayerRecord(str(n), str(k), int(w), int(g), f) for n, k, w, g, f in zip(
        ds["layer"].values, kinds, ds["width"].values,
        ds["gram_width"].values if "gram_width" in ds else ds["width"].values,
        stored_forms(ds), strict=True)]
    status = metric_status(ds)
    tagged = [str(name) for name, var in ds.data_vars.items() if "flq_metric" in var.attrs]
    return StoreSummary(
        store=store, source=ds.attrs.get("source"),
        flq_audit_version=ds.attrs.get("flq_audit_version"),
        probe=json.loads(ds.attrs.get("probe", "null")) or {},
        capture_config=json.loads(ds.attrs.get("capture_config", "{}")),
        steps=steps, layers=layers, n_samples=int(ds.sizes.get("sample", 0)),
        bytes_on_disk=bytes_on_disk,
        metrics=[n for n in tagged if status.get(n) != "incomplete"],
        stale_metrics=sorted(n for n, s in status.items() if s == "stale"),
        incomplete_metrics=sorted(n for n, s in status.items() if s == "incomplete"),
        stale_groups={tag: list(counts) for tag, counts in stale_groups(ds).items()},
        tags=stored_tags(ds.attrs),
    )


class _Variable:
    """One zarr array as the summary reads a Dataset variable: ``attrs`` and ``values``."""

    def __init__(self, array: Any) -> None:
        self._array = array
        self.attrs = dict(array.attrs)

    @property
    def values(self) -> np.ndarray:
        return np.asarray(self._array[...])


class ZarrView:
    """A store's zarr group seen as the Dataset ``xarray.open_zarr`` would give: arrays
    named by a dimension or listed in a variable's CF ``coordinates`` attribute are
    coordinates, the others data variables; values are read when asked for."""

    def __init__(self, group: Any) -> None:
        arrays = dict(group.arrays())
        dims: dict[str, int] = {}
        listed: set[str] = set()
        for array in arrays.values():
            dims.update(zip(array.metadata.dimension_names or (), array.shape, strict=True))
            listed.update(str(array.attrs.get("coordinates", "")).split())
        coordinates = (set(dims) | listed) & set(arrays)
        self.attrs: Mapping[str, Any] = dict(group.attrs)
        self.sizes: dict[str, int] = dims
        self.coords = {n: _Variable(a) for n, a in arrays.items() if n in coordinates}
        self.data_vars = {n: _Variable(a) for n, a in arrays.items() if n not in coordinates}

    def __contains__(self, name: object) -> bool:
        return name in self.coords or name in self.data_vars

    def __getitem__(self, name: str) -> _Variable:
        return self.data_vars[name] if name in self.data_vars else self.coords[name]


def read_summary(path: str | Path | StoreLocation, *, storage_options: dict | None = None
                 ) -> StoreSummary:
    """The summary of the store at ``path`` (local or URL), read with zarr alone: the same
    record as ``open_dataset(path).flq.summary()``."""
    import zarr

    from flq_audit.store import check_flq_store, is_consolidated

    location = StoreLocation.parse(path, storage_options)
    check_flq_store(location)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        group = zarr.open_group(location.zarr_store(read_only=True), mode="r", zarr_format=3,
                                use_consolidated=is_consolidated(location))
    return summarize(ZarrView(group), store=location.display,
                     bytes_on_disk=int(location.size_bytes()))


__all__ = ["LayerRecord", "StepRecord", "StoreSummary", "ZarrView", "read_summary", "summarize"]
