"""Grow a store's step axis: append the steps its source gained since the store was made.

A store lays out every step its source listed when it was created (an unwritten chunk costs
nothing), so a later audit of another selection only fills in steps. A source that gained
steps (a run in progress, a suite that grows) needs a longer axis: one short operation, done
by one writer at a time under the store-wide ``axis`` claim (:mod:`flq_audit.store._claims`),
on local folders and object stores alike:

1. A journal ``.flq/axis.json`` is written: the new length and the values of every small
   step-indexed array for the new steps (``step``, ``label``, ``commit``, ``duplicate_of``,
   flags), taken from the template of the audit's layout.
2. Every array whose first dimension is ``step`` is resized (data arrays, bookkeeping,
   extension and metric variables: the new rows hold their fill value) and the journal's
   values are written; the ``step`` coordinate last.
3. The metadata is consolidated, then the journal is deleted.

Readers use the consolidated metadata, so they see the store as it was until step 3. A
writer killed between 1 and 3 leaves the journal: the next writer (or the next finish)
redoes it, which is idempotent. Writers of existing steps go on meanwhile: appending moves
no index. New steps must come after the store's last step; one that falls between stored
steps cannot be placed (the axis stays sorted) and is refused with the way forward.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
import warnings
from collections.abc import Iterator, Sequence
from typing import Any, Literal

import numpy as np
import zarr

from flq_audit._faults import fault_point
from flq_audit.constants import STEP
from flq_audit.errors import StoreMismatchError
from flq_audit.store._claims import StepClaims
from flq_audit.store._location import StoreLocation
from flq_audit.store._schema import StoreLayout, fixed_width_strings_allowed, template

AXIS_CLAIM = "axis"
JOURNAL_KEY = ".flq/axis.json"


def open_fresh(location: StoreLocation, *, mode: Literal["r", "r+"] = "r+") -> zarr.Group:
    """The store's group from its own array metadata, never from the consolidated copy (which
    may predate a growth of the axis)."""
    read_only = mode == "r"
    with fixed_width_strings_allowed():
        return zarr.open_group(location.zarr_store(read_only=read_only), mode=mode,
                               use_consolidated=False)


def stored_steps(location: StoreLocation) -> list[int]:
    """The store's step coordinate as written now."""
    group = open_fresh(location, mode="r")
    return [int(s) for s in np.asarray(group[STEP][:])]  # type: ignore[index]  # an array


def unplaceable(stored: Sequence[int], wanted: Sequence[int]) -> list[int]:
    """Wanted steps the store lacks that fall before its last step (they cannot be appended)."""
    have, last = set(stored), max(stored, default=None)
    return sorted(s for s in wanted if s not in have and last is not None and s < last)


def appendable(stored: Sequence[int], layout: StoreLayout) -> list[int]:
    """Steps of the layout (the source's listing) after the store's last step: the steps a
    growth appends. Listed steps that fall between stored ones are left out of the store
    unless selected (then :func:`refuse_unplaceable` refuses them)."""
    last = max(stored, default=-(2**63))
    return sorted(s for s in layout.steps if s > last)


def refuse_unplaceable(location: StoreLocation, stored: Sequence[int],
                       wanted: Sequence[int]) -> None:
    """A :class:`StoreMismatchError` naming steps that cannot be added to the store."""
    between = unplaceable(stored, wanted)
    if between:
        shown = between if len(between) <= 8 else [*between[:8], "..."]
        raise StoreMismatchError(
            f"store {location.display!r} cannot take step(s) {shown}: they fall between its "
            f"steps {stored[0]}..{stored[-1]}, and a store's step axis grows only after its "
            "last step", path=location.display,
            hint=f"Select only steps after {stored[-1]}, or audit into a new --out (which "
            "lays out every step the source lists).")


def grow_axis(location: StoreLocation, layout: StoreLayout,
              claims: StepClaims | None = None) -> list[int]:
    """Append the steps of ``layout`` the store lacks; finish an interrupted growth first.

    Returns the steps appended by this call. Safe with several writers: growths take turns
    under the ``axis`` claim and each appends only what is still missing.
    """
    stored = stored_steps(location)
    refuse_unplaceable(location, stored, layout.written)
    if not appendable(stored, layout) and read_journal(location) is None:
        return []
    own = claims is None
    claims = claims or StepClaims(location)
    try:
        with axis_claim(claims):
            finish_journal(location)
            stored = stored_steps(location)
            refuse_unplaceable(location, stored, layout.written)
            missing = appendable(stored, layout)
            if not missing:
                return []
            journal = _journal(location, layout, stored, missing)
            _check_widths(location, journal)
            _write_journal(location, journal)
            fault_point("store-grow", stage="journal")
            _apply(location, journal)
            _finished(location)
            return missing
    finally:
        if own:
            claims.close()


@contextlib.contextmanager
def axis_claim(claims: StepClaims) -> Iterator[None]:
    """Hold the store-wide ``axis`` claim (waiting while another writer holds it)."""
    while not claims.claim(AXIS_CLAIM):
        time.sleep(min(0.5, claims.lease_s / 4))
    try:
        yield
    finally:
        claims.release(AXIS_CLAIM)


def read_journal(location: StoreLocation) -> dict[str, Any] | None:
    """The journal of a growth that has not finished (``None``: none)."""
    data = location.read_bytes(JOURNAL_KEY)
    return None if data is None else json.loads(data)


def finish_journal(location: StoreLocation) -> bool:
    """Redo an interrupted growth (the caller holds the ``axis`` claim); True if there was one."""
    journal = read_journal(location)
    if journal is None:
        return False
    _apply(location, journal)
    _finished(location)
    return True


def _finished(location: StoreLocation) -> None:
    from flq_audit.store import consolidate

    consolidate(location)
    if location.is_local:
        (location.path / JOURNAL_KEY).unlink(missing_ok=True)
        return
    fs, _ = location.filesystem()
    with location.remote(), contextlib.suppress(FileNotFoundError):
        fs.rm(location.key_path(JOURNAL_KEY))


def _write_journal(location: StoreLocation, journal: dict[str, Any]) -> None:
    """Write the journal whole (a local file by rename, an object in one put)."""
    data = json.dumps(journal).encode()
    if location.is_local:
        path = location.path / JOURNAL_KEY
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".partial")
        partial.write_bytes(data)
        os.replace(partial, path)
        return
    fs, _ = location.filesystem()
    with location.remote():
        fs.pipe_file(location.key_path(JOURNAL_KEY), data)


def _journal(location: StoreLocation, layout: StoreLayout, stored: list[int],
             missing: list[int]) -> dict[str, Any]:
    """The new axis length and, for every small step-indexed array, its new rows."""
    from dataclasses import replace

    index = {step: i for i, step in enumerate(layout.steps)}
    rows = [index[s] for s in missing]
    added = replace(layout, steps=tuple(missing),
                    labels=tuple(layout.labels[i] for i in rows),
                    commits=tuple(layout.commits[i] for i in rows))
    tpl = template(added, version="")
    values: dict[str, Any] = {}
    for name, (dims, array, _) in {**tpl.coords, **tpl.data_vars}.items():
        if dims and dims[0] == STEP:
            values[name] = np.asarray(array).tolist()
    return {"start": len(stored), "length": len(stored) + len(missing), "values": values}


def _apply(location: StoreLocation, journal: dict[str, Any]) -> None:
    """Resize every step-indexed array to the journal's length and write its new rows;
    the ``step`` coordinate last (idempotent: a redo writes the same)."""
    with fixed_width_strings_allowed():
        _apply_journal(location, journal)


def _apply_journal(location: StoreLocation, journal: dict[str, Any]) -> None:
    start, length, values = journal["start"], journal["length"], journal["values"]
    group = open_fresh(location)
    with warnings.catch_warnings():  # zarr notes the claims folder, which is no array
        warnings.simplefilter("ignore")
        names = sorted(group.array_keys())
    for name in [n for n in names if n != STEP] + [STEP]:
        array = group[name]
        assert isinstance(array, zarr.Array)
        dims = getattr(array.metadata, "dimension_names", None) or ()
        if not dims or dims[0] != STEP:
            continue
        if array.shape[0] != length:
            array.resize((length, *array.shape[1:]))
        if name in values:
            array[start:length] = np.asarray(values[name], dtype=array.dtype)
        if name != STEP:
            fault_point("store-grow", stage="arrays")


def _check_widths(location: StoreLocation, journal: dict[str, Any]) -> None:
    """New values of fixed-width string coordinates (``label``, ``commit``) must fit their
    stored width (checked before anything is written)."""
    group = open_fresh(location, mode="r")
    for name, new in journal["values"].items():
        array = group.get(name)
        if not isinstance(array, zarr.Array) or array.dtype.kind != "U":
            continue
        longest = max((len(str(v)) for v in new), default=0)
        width = array.dtype.itemsize // 4
        if longest > width:
            raise StoreMismatchError(
                f"store {location.display!r}: its {name!r} coordinate holds at most {width} "
                f"characters, a new step's {name} has {longest}", path=location.display,
                hint="Audit into a new --out.")


__all__ = ["AXIS_CLAIM", "JOURNAL_KEY", "appendable", "axis_claim", "finish_journal", "grow_axis",
           "open_fresh", "read_journal", "refuse_unplaceable", "stored_steps", "unplaceable"]
