"""Several stores as one lazy Dataset with a ``run`` dimension (:func:`open_runs`).

Runs may differ in steps (the union is kept; a run lacks a step → NaN, ``done`` False), in
layers (aligned by name, or by relative depth for networks of different depths), in sizes
(feature and Gram axes are padded with NaN to the widest run; ``width`` says each run's own)
and, only when asked, in probes. Each store's run attributes become coordinates along
``run``: ``store``, ``source``, ``probe_fingerprint``, ``flq_audit_version``, the capture
options and every ``--tag`` (``ds.sel(run=ds.weight_decay == 0.5)``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import xarray as xr

from flq_audit._tags import stored_tags
from flq_audit.constants import LAYER, STEP
from flq_audit.errors import OptionError, StoreMismatchError
from flq_audit.store import StoreLocation, open_dataset

RUN = "run"
Alignment = Literal["name", "depth"]
#: Capture options that become run coordinates (the others are lists or paths).
_CAPTURE_COORDS = ("activation_dtype", "gram_dtype", "grams", "max_samples", "model_sha256",
                   "replay_dtype", "pooling")
#: Run coordinates taken from the root attributes as they are.
_ATTR_COORDS = ("source", "probe_fingerprint", "flq_audit_version", "classifier")


def run_names(locations: Sequence[StoreLocation], names: Sequence[str] | None) -> list[str]:
    """The given names (checked), else each store's file name without ``.zarr``, made unique
    with the parent folder's name where two stores share a name."""
    if names is not None:
        names = [str(n) for n in names]
        if len(names) != len(locations):
            raise OptionError(f"{len(names)} run name(s) for {len(locations)} store(s): give "
                              "one name per store, in the same order")
        if len(set(names)) != len(names):
            raise OptionError(f"run names must differ; got {names}")
        return names
    stems = [_stem(loc.display) for loc in locations]
    if len(set(stems)) == len(stems):
        return stems
    longer = ["/".join(Path(loc.display.rstrip("/")).parts[-2:]).removesuffix(".zarr")
              for loc in locations]
    if len(set(longer)) == len(longer):
        return longer
    return [f"{stem}#{i}" for i, stem in enumerate(stems)]


def _stem(url: str) -> str:
    name = url.rstrip("/").rsplit("/", 1)[-1]
    return name.removesuffix(".zarr") or name


def _check_probes(datasets: list[xr.Dataset], names: list[str], across_probes: bool) -> None:
    fingerprints = [str(ds.attrs.get("probe_fingerprint", "none")) for ds in datasets]
    if len(set(fingerprints)) <= 1 or across_probes:
        return
    groups: dict[str, list[str]] = {}
    for name, fp in zip(names, fingerprints, strict=True):
        groups.setdefault(fp[:12], []).append(name)
    listed = "; ".join(f"{', '.join(runs)} (probe {fp})" for fp, runs in groups.items())
    raise StoreMismatchError(
        f"the runs were audited on different probes: {listed}", path=names[0],
        hint="Compare runs on one probe; to compare across probes anyway, pass "
        "across_probes=True (--across-probes): TL is then measured on different samples.")


def depth_positions(n_layers: int) -> np.ndarray:
    """Relative depth of each of ``n_layers`` layers: 0 (first) … 1 (last)."""
    return np.linspace(0.0, 1.0, n_layers) if n_layers > 1 else np.zeros(1)


def depth_alignment(layer_lists: list[list[str]]) -> tuple[list[str], list[list[int]]]:
    """Align layers by relative depth: the run with the fewest layers sets the grid, and each
    run contributes, at each grid point, its layer nearest in relative depth (the shallower
    of two equally near).

    Returns the grid's labels (``"d0.50"``) and, per run, the chosen layer indices.

    >>> depth_alignment([["a", "b", "c"], ["p", "q", "r", "s", "t"]])
    (['d0.00', 'd0.50', 'd1.00'], [[0, 1, 2], [0, 2, 4]])
    """
    grid = depth_positions(min(len(layers) for layers in layer_lists))
    # distances rounded so that a tie (0.5 between 1/3 and 2/3) goes to the shallower layer
    chosen = [[int(np.argmin(np.round(np.abs(depth_positions(len(layers)) - g), 9)))
               for g in grid] for layers in layer_lists]
    return [f"d{g:.2f}" for g in grid], chosen


def _with_dimension_indices(ds: xr.Dataset) -> xr.Dataset:
    """Integer indices on the dimensions that have none (feature, Gram rows ...), so that
    runs of different sizes are padded, not refused, when they are set side by side."""
    missing = {dim: np.arange(size) for dim, size in ds.sizes.items() if dim not in ds.coords}
    return ds.assign_coords(missing)


def _run_coordinates(ds: xr.Dataset, location: StoreLocation) -> dict[str, Any]:
    """The scalar facts of one run: store, attributes, capture options and tags."""
    facts: dict[str, Any] = {"store": location.display}
    facts.update({key: str(ds.attrs[key]) for key in _ATTR_COORDS if key in ds.attrs})
    try:
        config = json.loads(str(ds.attrs.get("capture_config") or "{}"))
    except ValueError:
        config = {}
    facts.update({key: config[key] for key in _CAPTURE_COORDS
                  if key in config and not isinstance(config[key], list | dict)})
    facts.update(stored_tags(ds.attrs))
    return facts


def _coordinate_values(values: list[Any]) -> np.ndarray:
    """One run coordinate: numbers stay numbers (NaN where a run lacks it), anything else
    is text (empty where a run lacks it)."""
    present = [v for v in values if v is not None]
    numeric = all(isinstance(v, int | float) and not isinstance(v, bool) for v in present)
    if present and numeric and len(present) == len(values) and all(isinstance(v, int)
                                                                   for v in values):
        return np.asarray(values, dtype=np.int64)
    if present and numeric:
        return np.asarray([np.nan if v is None else v for v in values], dtype=float)
    if present and all(isinstance(v, bool) for v in present) and len(present) == len(values):
        return np.asarray(values, dtype=bool)
    return np.asarray(["" if v is None else str(v) for v in values], dtype=str)


def _fill_values(datasets: list[xr.Dataset]) -> dict[str, Any]:
    """What a run's missing step, layer or sample reads as: NaN for numbers, False for flags,
    -1 for integer positions, empty text for strings."""
    fills: dict[str, Any] = {}
    for ds in datasets:
        for name, var in ds.variables.items():
            kind = var.dtype.kind
            fills[str(name)] = (False if kind == "b" else -1 if kind in "iu" else ""
                                if kind in "USOT" else np.nan)
    return fills


def _prepared(ds: xr.Dataset, layers: list[str], labels: list[str]) -> xr.Dataset:
    """One run's Dataset on the common layer labels, with its own layer names kept."""
    picked = ds.sel({LAYER: layers})
    picked = picked.assign_coords(source_layer=(LAYER, np.asarray(layers, dtype=str)))
    picked = picked.assign_coords({LAYER: np.asarray(labels, dtype=str)})
    # every coordinate but the dimension indices varies by run: make it a variable to concat
    kept = [name for name in picked.coords if name not in picked.dims]
    return _with_dimension_indices(picked.reset_coords(kept))


def open_runs(
    stores: Sequence[str | Path | StoreLocation],
    names: Sequence[str] | None = None,
    *,
    align: Alignment = "name",
    across_probes: bool = False,
    storage_options: dict[str, Any] | None = None,
) -> xr.Dataset:
    """Open several stores as one lazy Dataset with a ``run`` dimension.

    ``align="name"`` keeps the union of layer names (a run lacking a layer reads NaN there);
    ``align="depth"`` matches layers by relative depth (see :func:`depth_alignment`), with each
    run's own layer name in the ``source_layer`` coordinate (run, layer). Stores audited on
    different probes are refused unless ``across_probes``. ``storage_options`` apply to every
    URL store. Nothing is read but metadata and coordinates: the data stay dask arrays, on
    any scheduler (``dask.distributed`` included).
    """
    if not stores:
        raise OptionError("open_runs needs at least one store")
    if align not in ("name", "depth"):
        raise OptionError(f"align must be 'name' or 'depth', got {align!r}")
    locations = [StoreLocation.parse(s, storage_options) for s in stores]
    labels = run_names(locations, names)
    datasets = [open_dataset(loc) for loc in locations]
    _check_probes(datasets, labels, across_probes)
    layer_lists = [[str(v) for v in ds[LAYER].values] for ds in datasets]
    if align == "depth":
        grid, chosen = depth_alignment(layer_lists)
        prepared = [_prepared(ds, [layers[i] for i in picks], grid)
                    for ds, layers, picks in zip(datasets, layer_lists, chosen, strict=True)]
    else:
        prepared = [_prepared(ds, layers, layers)
                    for ds, layers in zip(datasets, layer_lists, strict=True)]
    combined = xr.concat(prepared, dim=RUN, join="outer", data_vars="all", coords="minimal",
                         compat="override", combine_attrs="drop_conflicts",
                         fill_value=_fill_values(prepared))
    if align == "name":  # keep the first run's layer order, then each new name as it comes
        order = list(dict.fromkeys(name for layers in layer_lists for name in layers))
        combined = combined.sel({LAYER: order})
    per_run = [name for name in combined.data_vars
               if name in _run_varying(datasets)]
    combined = combined.set_coords(per_run)
    facts = [_run_coordinates(ds, loc) for ds, loc in zip(datasets, locations, strict=True)]
    keys = list(dict.fromkeys(key for f in facts for key in f))
    combined = combined.assign_coords({RUN: np.asarray(labels, dtype=str)})
    combined = combined.assign_coords({key: (RUN, _coordinate_values([f.get(key) for f in facts]))
                                       for key in keys})
    combined.attrs = _combined_attrs(datasets, labels, locations, align, across_probes,
                                     layer_lists, combined)
    return combined


def _run_varying(datasets: list[xr.Dataset]) -> set[str]:
    """The stores' non-index coordinates (they become coordinates along run)."""
    return {str(name) for ds in datasets for name in ds.coords if name not in ds.dims} | {
        "source_layer"}


def _combined_attrs(datasets: list[xr.Dataset], labels: list[str],
                    locations: list[StoreLocation], align: str, across_probes: bool,
                    layer_lists: list[list[str]], combined: xr.Dataset) -> dict[str, Any]:
    mapping = {run: dict(zip([str(v) for v in combined[LAYER].values],
                             [str(v) for v in combined["source_layer"].sel({RUN: run}).values],
                             strict=True)) for run in labels}
    return {
        "Conventions": "CF-1.8 flq-audit-1",
        "title": f"flq-audit comparison of {len(labels)} run(s)",
        "runs": json.dumps([{"run": name, "store": loc.display,
                             "source": str(ds.attrs.get("source", "")),
                             "layers": layers}
                            for name, loc, ds, layers in zip(labels, locations, datasets,
                                                             layer_lists, strict=True)]),
        "layer_alignment": align,
        "layer_mapping": json.dumps(mapping),
        "across_probes": int(across_probes),
        "dimensions_padded": json.dumps(sorted({str(d) for ds in datasets for d in ds.dims
                                                if ds.sizes[d] != combined.sizes.get(d)})),
    }


def run_view(metrics: xr.Dataset, run: str) -> xr.Dataset:
    """One run's metrics on its own done steps and its own layers."""
    one = metrics.sel({RUN: run})
    one = one.isel({STEP: np.flatnonzero(np.asarray(one["done"].values, dtype=bool))})
    if "depth" in one.coords:
        one = one.isel({LAYER: np.flatnonzero(np.asarray(one["depth"].values) >= 0)})
    return one
