"""The metrics engine: order groups by their needs, build one lazy graph, compute, mask,
persist each group and stamp it last, so that an interrupted write never looks current."""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import xarray as xr

from flq_audit._faults import fault_point
from flq_audit._gram_forms import NONE, stored_forms
from flq_audit.errors import MetricError, OptionError
from flq_audit.metrics._graph import GroupContext, group_dataset, mask_nonfinite
from flq_audit.metrics._incremental import added_steps, merge_steps, whole_outputs
from flq_audit.metrics._lazy import LayerMoments, layer_moments
from flq_audit.metrics._options import (
    TLOptions,
    options_attrs,
    options_suffix,
    parameter_set_id,
)
from flq_audit.metrics._spec import INPUTS, MetricSpec, registry
from flq_audit.metrics._stamp import (
    GROUP_ATTR,
    LEGACY_STAMP_ATTR,
    OUTPUT_ATTR,
    PARAM_ID_ATTR,
    PARAMS_ATTR,
    STAMPS_ATTR,
    TAG_ATTR,
    group_of,
    incomplete_groups,
    is_complete,
    is_current,
    make_stamp,
    stamps,
    stored_name,
    stored_parameters,
    variables_by_tag,
    with_stamps,
)


def ordered_groups(groups: Sequence[str], specs: Mapping[str, MetricSpec]) -> list[str]:
    """The requested groups and the groups they need, each after what it needs."""
    order: list[str] = []

    def visit(group: str, path: tuple[str, ...]) -> None:
        if group in order:
            return
        if group in path:
            raise OptionError(f"metric groups depend on each other in a cycle: {path}")
        for need in sorted(specs[group].needs - INPUTS):
            visit(need, (*path, group))
        order.append(group)

    for group in groups:
        visit(group, ())
    return order


def _output_name(attrs: Mapping[str, Any], name: str, suffix: str) -> str:
    """The output a stored variable holds: its ``flq_output`` attribute, or for a variable
    written by 0.1 (without it) the output whose 0.1 name for these parameters it has."""
    if OUTPUT_ATTR in attrs:
        return str(attrs[OUTPUT_ATTR])
    if suffix and name.startswith("target_linearity" + suffix):
        return name.replace(suffix, "", 1)
    return name.removesuffix(suffix) if suffix else name


class _Plan:
    """One group's options, parameters, tag and parameter-set id."""

    def __init__(self, spec: MetricSpec, options: object | None) -> None:
        self.spec = spec
        self.options = options
        self.params = options_attrs(options)
        self.suffix = options_suffix(options)
        self.tag = spec.group + self.suffix
        self.param_id = parameter_set_id({"group": spec.group, **self.params})

    def var_attrs(self) -> dict[str, Any]:
        return {TAG_ATTR: self.tag, GROUP_ATTR: self.spec.group, PARAM_ID_ATTR: self.param_id,
                PARAMS_ATTR: json.dumps(self.params, sort_keys=True), **self.params}


def run_metrics(
    path: str | Path,
    ds: xr.Dataset,
    *,
    metrics: Sequence[str],
    tl: TLOptions | None = None,
    options: Mapping[str, object] | None = None,
    scheduler: str | None = None,
    recompute: bool = False,
) -> xr.Dataset:
    """Compute the requested groups of the store at ``path`` (opened as ``ds``; the caller
    holds its lock), persist each with its stamp last, and return them.

    Groups already stored with the same parameters over the same done steps are read back,
    unless ``recompute``; groups interrupted while being written are recomputed. A
    ``per_step`` group stored from other done steps computes only the steps it lacks and
    recomputes its trajectory outputs; any other group is recomputed whole.
    """
    specs = registry()
    groups = list(dict.fromkeys(metrics))
    unknown = [m for m in groups if m not in specs]
    if unknown:
        raise OptionError(f"unknown metric(s) {unknown}; available: {list(specs)}")
    order = ordered_groups(groups, specs)
    plans = {g: _Plan(specs[g], _options_for(specs[g], tl or TLOptions(), options or {}))
             for g in order}
    need_moments = [g for g in groups if "moments" in specs[g].needs
                    or any("moments" in specs[d].needs for d in specs[g].needs if d in specs)]
    if "activations" not in ds and need_moments:
        raise MetricError(
            f"store {str(path)!r} holds Grams only (a weights-only audit): metric group(s) "
            f"{need_moments} need activations; available here: "
            f"{[g for g in specs if g not in need_moments]}", path=path,
        )
    _refuse_missing_grams(path, ds, order, specs)
    if not ds["done"].values.astype(bool).any():
        raise MetricError(f"store {str(path)!r} has no completed step yet; run the audit first",
                          path=path)
    results: dict[str, xr.Dataset] = {}
    for g in order:
        plan = plans[g]
        if not recompute and is_current(ds, plan.tag, plan.param_id):
            results[g] = _read_back(ds, plan)
    added = {} if recompute else {
        g: steps for g in order if g not in results
        and (steps := added_steps(ds, specs[g], plans[g].tag, plans[g].param_id)) is not None}
    extended = _extend(ds, added, specs, plans, scheduler)
    fresh = _compute_fresh(ds, [g for g in order if g not in results and g not in extended],
                           specs, plans, {**results, **extended}, scheduler)
    fresh = {g: extended[g] if g in extended else fresh[g] for g in order
             if g in extended or g in fresh}
    root_attrs = _adopt_legacy(ds, specs)
    written = [g for g in order if g in fresh]
    for g in written:
        root_attrs = _persist(path, ds, root_attrs, plans[g], fresh[g],
                              consolidate=g == written[-1])
    merged = [_named(fresh.get(g, results.get(g)), plans[g]) for g in groups]
    return xr.merge(merged, combine_attrs="drop_conflicts", compat="override")


def gram_refusal(spec: MetricSpec, forms: set[str]) -> str | None:
    """Why a group cannot be computed from a store's Gram ``forms`` (``None``: it can)."""
    if "gram" not in spec.needs:
        return None
    kept = forms - {NONE}
    if not kept:
        return "this store keeps no Grams (audited with --grams none)"
    if not kept <= spec.gram_forms:
        return ("this store keeps only the Grams' eigenvalues (--grams spectrum), and "
                f"{spec.group!r} needs the whole Gram")
    return None


def _refuse_missing_grams(path: str | Path, ds: xr.Dataset, groups: Sequence[str],
                          specs: Mapping[str, MetricSpec]) -> None:
    forms = set(stored_forms(ds))
    refused = {g: why for g in groups if (why := gram_refusal(specs[g], forms)) is not None}
    if refused:
        allowed = [g for g in specs if gram_refusal(specs[g], forms) is None]
        raise MetricError(
            f"store {str(path)!r}: metric group(s) {list(refused)} cannot be computed: "
            f"{next(iter(refused.values()))}; available here: {allowed}", path=path,
            hint="Audit again with --grams compact (the default) or --grams full to keep "
            "the Grams these groups need.")


def supported_groups(ds: xr.Dataset) -> list[str]:
    """The registered groups a store's contents allow (activations, Gram forms)."""
    specs, forms = registry(), set(stored_forms(ds))

    def allowed(group: str) -> bool:
        spec = specs[group]
        if "moments" in spec.needs and "activations" not in ds:
            return False
        if gram_refusal(spec, forms) is not None:
            return False
        return all(allowed(d) for d in spec.needs - INPUTS if d in specs)

    return [g for g in specs if allowed(g)]


def _read_back(ds: xr.Dataset, plan: _Plan) -> xr.Dataset:
    """A stored group's values, named by output."""
    names = stamps(ds.attrs)[plan.tag]["variables"]
    stored = ds[names].compute()
    return stored.rename({v: _output_name(ds[v].attrs, v, plan.suffix) for v in names})


def _extend(ds: xr.Dataset, added: Mapping[str, list[int]], specs: Mapping[str, MetricSpec],
            plans: Mapping[str, _Plan], scheduler: str | None) -> dict[str, xr.Dataset]:
    """Per-step groups stored from other done steps: the added steps computed (groups with
    the same added steps share one pass over them), the stored steps read back, the
    trajectory outputs recomputed over the whole store. A group whose outputs differ from
    those stored is left out (it is then computed whole)."""
    stored = {g: _read_back(ds, plans[g]) for g in added}
    whole = {g: whole_outputs(specs[g], stored[g]) for g in added}
    by_steps: dict[tuple[int, ...], list[str]] = {}
    for g, added_to in added.items():
        by_steps.setdefault(tuple(added_to), []).append(g)
    new: dict[str, xr.Dataset] = {}
    for steps, groups in by_steps.items():
        if not steps:
            continue
        lazy = _lazy_first(ds.sel(step=list(steps)), groups, specs, plans)
        lazy = {g: data.drop_vars([v for v in whole[g] if v in data])
                for g, data in lazy.items()
                if {str(v) for v in data.data_vars} | set(whole[g]) == set(stored[g].data_vars)}
        new.update(zip(lazy, _compute(list(lazy.values()), scheduler), strict=True))
    kept = [g for g, steps in added.items() if g in new or not steps]
    trajectories = {g: mask_nonfinite(group_dataset(specs[g], GroupContext(
        ds, plans[g].options)), ds)[whole[g]] for g in kept if whole[g]}
    recomputed = dict(zip(trajectories, _compute(list(trajectories.values()), scheduler),
                          strict=True))
    return {g: merge_steps(ds, stored[g], new.get(g), recomputed.get(g, xr.Dataset()),
                           added[g], {str(v): var.attrs for v, var in stored[g].data_vars.items()})
            for g in kept}


def _adopt_legacy(ds: xr.Dataset, specs: Mapping[str, MetricSpec]) -> dict[str, Any]:
    """Root attributes with stamps for the complete groups of a store written by 0.1 (each of
    its variables carried its own stamp), so that they stay readable and current."""
    if STAMPS_ATTR in ds.attrs:
        return dict(ds.attrs)
    entries: dict[str, dict[str, Any] | None] = {}
    for tag, names in variables_by_tag(ds).items():
        if not is_complete(ds, tag):
            continue
        attrs = ds[names[0]].attrs
        group = group_of(tag, attrs)
        spec = specs.get(group)
        params = stored_parameters(attrs, spec.options if spec else None)
        legacy = json.loads(attrs.get(LEGACY_STAMP_ATTR, "{}"))
        entries[tag] = {"group": group, "params": params,
                        "param_id": parameter_set_id({"group": group, **params}),
                        "done_steps": legacy.get("done_steps"), "variables": sorted(names)}
    return with_stamps(ds.attrs, entries)


def _options_for(spec: MetricSpec, tl: TLOptions, given: Mapping[str, object]) -> object | None:
    if spec.group in given:
        return given[spec.group]
    if spec.options is TLOptions:
        return tl
    return spec.make_options({})


def _compute_fresh(
    ds: xr.Dataset, todo: list[str], specs: Mapping[str, MetricSpec],
    plans: Mapping[str, _Plan], done: Mapping[str, xr.Dataset], scheduler: str | None,
) -> dict[str, xr.Dataset]:
    """Groups that need only the store in one pass (shared moments), then the others."""
    lazy = _lazy_first(ds, [g for g in todo if not (specs[g].needs - INPUTS)], specs, plans)
    fresh = dict(zip(lazy, _compute(list(lazy.values()), scheduler), strict=True))
    for g in todo:
        if g in fresh:
            continue
        context = GroupContext(ds, plans[g].options, groups={**done, **fresh})
        fresh[g] = _compute([mask_nonfinite(group_dataset(specs[g], context), ds)],
                            scheduler)[0]
    return fresh


def _lazy_first(ds: xr.Dataset, groups: Sequence[str], specs: Mapping[str, MetricSpec],
                plans: Mapping[str, _Plan]) -> dict[str, xr.Dataset]:
    """Lazy groups that need only the store, sharing their moments."""
    moments = _moments_by_form(ds, [(specs[g], plans[g].options) for g in groups])
    return {g: mask_nonfinite(group_dataset(specs[g], GroupContext(
        ds, plans[g].options,
        shared_moments=moments.get(_form_key(specs[g], plans[g].options)))), ds)
        for g in groups}


def _form_key(spec: MetricSpec, options: object | None) -> tuple[bool, bool]:
    """Which moments a reading group takes: ``(dual kernels for wide layers, QR factors)``."""
    return spec.accepts_dual(options), spec.wants_qr(options)


def _moments_by_form(ds: xr.Dataset, readers: Sequence[tuple[MetricSpec, object | None]]
                     ) -> dict[tuple[bool, bool], LayerMoments]:
    """The moments each reading group gets, by :func:`_form_key`: a group's form is its own,
    whatever other groups share the pass (layers that stay primal moments in several forms
    share one graph, and so do the dual kernels: each block is read once)."""
    forms = {_form_key(spec, options) for spec, options in readers if "moments" in spec.needs}
    primal = layer_moments(ds) if any(not qr for _, qr in forms) else None
    return {(dual, qr): primal if primal is not None and not (dual or qr)
            else layer_moments(ds, dual=dual, qr=qr, primal=primal) for dual, qr in forms}


def _named(result: xr.Dataset | None, plan: _Plan) -> xr.Dataset:
    assert result is not None
    named = result.rename({v: stored_name(str(v), plan.suffix) for v in result.data_vars})
    for base, var in zip(result.data_vars, named.data_vars.values(), strict=True):
        var.attrs = {**var.attrs, **plan.var_attrs(), OUTPUT_ATTR: str(base)}
    return named


def _write(path: str | Path, data: xr.Dataset, attrs: Mapping[str, Any], *,
           consolidated: bool) -> None:
    data = data.drop_vars(list(data.coords))
    data.attrs = dict(attrs)  # appending rewrites the root attributes: keep provenance
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zarr v3 calls consolidated metadata experimental
        target = path.zarr_store() if hasattr(path, "zarr_store") else str(path)  # a URL store
        data.to_zarr(target, mode="a", consolidated=consolidated, zarr_format=3)


def _persist(path: str | Path, ds: xr.Dataset, root_attrs: dict[str, Any], plan: _Plan,
             result: xr.Dataset, *, consolidate: bool) -> dict[str, Any]:
    """Unstamp, write the arrays, then stamp: only the stamp makes the group current.
    ``consolidate`` (the last group of a run) consolidates the metadata with the stamp."""
    group = plan.spec.group
    named = _named(result, plan)
    names = list(named.data_vars)
    unstamped = with_stamps(root_attrs, {plan.tag: None})
    if plan.tag in stamps(root_attrs):  # a stamp to withdraw before any array changes
        _write(path, xr.Dataset(), unstamped, consolidated=False)
    _write(path, named[names[:1]], unstamped, consolidated=False)
    fault_point("metrics-write", group=group)
    if names[1:]:
        _write(path, named[names[1:]], unstamped, consolidated=False)
    fault_point("metrics-stamp", group=group)
    stamp = make_stamp(ds, group, plan.params, plan.param_id, [str(n) for n in names])
    stamped = with_stamps(unstamped, {plan.tag: stamp})
    _write(path, xr.Dataset(), stamped, consolidated=consolidate)
    return stamped


def _compute(datasets: list[xr.Dataset], scheduler: str | None) -> list[xr.Dataset]:
    """Compute several lazy Datasets in one pass (shared moments are read once)."""
    if not datasets:
        return []
    merged = xr.merge(datasets, combine_attrs="drop_conflicts", compat="override")
    from flq_audit.scheduler import active_client, scheduler_client

    client = active_client() if scheduler is None else None
    if client is not None:  # the caller's cluster, as dask itself would use it
        computed = merged.compute(scheduler=client)
    elif scheduler in (None, "threads", "sync", "synchronous"):
        from threadpoolctl import threadpool_limits

        # dask runs one task per (step, layer) block in parallel: a multi-threaded BLAS inside
        # each task oversubscribes the cores (measured here: 4 ms → 115 ms for one HᵀH block)
        with threadpool_limits(limits=1, user_api="blas"):
            computed = merged.compute(scheduler=scheduler or "threads")
    else:
        with scheduler_client(scheduler):
            computed = merged.compute()
    return [computed[list(d.data_vars)].assign_attrs(d.attrs) for d in datasets]


def require_complete(ds: xr.Dataset, store: str | Path) -> None:
    """Refuse a store holding a metric group whose write was interrupted (no stamp)."""
    for tag in incomplete_groups(ds):
        names = [v for v, var in ds.data_vars.items() if var.attrs.get(TAG_ATTR) == tag]
        group = group_of(tag, ds[names[0]].attrs) if names else tag
        flags = _cli_flags(ds[names[0]].attrs) if names else ""
        raise MetricError(
            f"metric group {group!r} in store {str(store)!r} is incomplete: its computation "
            f"was interrupted before it was stamped (variables {names})", path=store,
            hint=f"Run `flq-audit metrics {store} --metric {group}{flags}` to complete it.",
        )


def _cli_flags(attrs: Mapping[str, Any]) -> str:
    if "pca" not in attrs:
        return ""
    options = TLOptions.from_attrs(attrs)
    flags = ""
    if options.pca is not None:
        flags += f" --pca {options.pca} --pca-threshold {options.pca_threshold}"
    if options.ridge:
        flags += f" --ridge {options.ridge:g}"
    if options.denominator != "column":
        flags += f" --denominator {options.denominator}"
    return flags


__all__ = ["gram_refusal", "ordered_groups", "require_complete", "run_metrics", "stored_name",
           "supported_groups"]
