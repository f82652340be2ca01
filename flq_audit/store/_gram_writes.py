"""What a store keeps of each captured weight, in the layer's form, as region writes."""

from __future__ import annotations

import numpy as np
import zarr

from flq_audit._gram_forms import (
    DENSE,
    FACTOR,
    GRAM,
    GRAM_EIGENVALUES,
    GRAM_FACTOR,
    GRAM_FORM,
    GRAM_VARIABLES,
    NONE,
    SPECTRUM,
)
from flq_audit._gram_maths import MatrixLike, gram_eigenvalues, gram_of_matrix, matrix_as
from flq_audit.errors import StoreError
from flq_audit.store._schema import StoreLayout

#: ``(array, region, values)`` of one write.
Write = tuple[zarr.Array, tuple, np.ndarray]


def store_forms(group: zarr.Group) -> list[str]:
    """Each layer's Gram form as the store records it (a store written before ``--grams``
    has no ``gram_form``: every layer is dense)."""
    if GRAM_FORM not in group:
        return [DENSE if GRAM in group else NONE] * _array(group, "layer").shape[0]
    return [str(form) for form in np.asarray(_array(group, GRAM_FORM)[:])]


def _array(group: zarr.Group, name: str) -> zarr.Array:
    node = group[name]
    if not isinstance(node, zarr.Array):
        raise StoreError(f"store variable {name!r} is a group, expected an array",
                         path=str(group.store_path))
    return node


class GramWrites:
    """The Gram arrays of one store and its layers' forms (the store's own, not the run's:
    a store keeps the form it was made with)."""

    def __init__(self, group: zarr.Group, layout: StoreLayout) -> None:
        self.layout = layout
        self.forms = store_forms(group)
        self.arrays: dict[str, zarr.Array] = {
            name: node for name in GRAM_VARIABLES if name in group
            and isinstance(node := group[name], zarr.Array)}
        self.path = str(group.store_path)

    def keeps(self, layer_index: int) -> bool:
        """Whether the store keeps anything of the layer's Gram."""
        return self.forms[layer_index] != NONE

    def dense(self, step_index: int, layer_index: int, gram: np.ndarray) -> Write:
        """One layer's dense Gram, padded to whole chunks (no chunk of padding only)."""
        form = self.forms[layer_index]
        if form != DENSE:
            raise StoreError(f"layer {layer_index} keeps its Gram as {form!r}, not dense: "
                             "give its weight to write_grams", path=self.path)
        side = self.layout.gram_extent(max(gram.shape))
        padded = np.full((side, side), np.nan, dtype=self.layout.gram_dtype)
        padded[: gram.shape[0], : gram.shape[1]] = gram
        return (self.arrays[GRAM], (step_index, layer_index, slice(0, side), slice(0, side)),
                padded)

    def _factor(self, step_index: int, layer_index: int, matrix: MatrixLike) -> Write:
        """The weight itself, as its Gram's factor, padded to whole chunks."""
        array = self.arrays[GRAM_FACTOR]
        factor = matrix_as(matrix, str(array.dtype))
        rows_chunk, cols_chunk = array.chunks[2], array.chunks[3]
        rows = min(array.shape[2], -(-factor.shape[0] // rows_chunk) * rows_chunk)
        cols = min(array.shape[3], -(-factor.shape[1] // cols_chunk) * cols_chunk)
        padded = np.full((rows, cols), np.nan, dtype=array.dtype)
        padded[: factor.shape[0], : factor.shape[1]] = factor
        return array, (step_index, layer_index, slice(0, rows), slice(0, cols)), padded

    def _eigenvalues(self, step_index: int, layer_index: int, matrix: MatrixLike) -> Write:
        array = self.arrays[GRAM_EIGENVALUES]
        values = np.full(array.shape[2], np.nan, dtype=array.dtype)
        eigenvalues = gram_eigenvalues(matrix)
        values[: eigenvalues.size] = eigenvalues
        return array, (step_index, layer_index), values

    def of_weight(self, step_index: int, layer_index: int, matrix: MatrixLike) -> Write:
        """What the store keeps of one ``d_out × d_in`` weight, in the layer's form: WᵀW in
        float64, the weight itself, or the eigenvalues of WᵀW."""
        form = self.forms[layer_index]
        if form == DENSE:
            return self.dense(step_index, layer_index, gram_of_matrix(matrix))
        if form == FACTOR:
            return self._factor(step_index, layer_index, matrix)
        if form == SPECTRUM:
            return self._eigenvalues(step_index, layer_index, matrix)
        raise StoreError(f"layer {layer_index} keeps no Gram (--grams none)", path=self.path)


__all__ = ["GramWrites", "Write", "store_forms"]
