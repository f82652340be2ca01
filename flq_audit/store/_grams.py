"""How a store keeps each layer's Gram (``--grams``): the form per layer, the arrays that
hold them, their chunks and sizes.

``dense`` layers fill ``gram`` (step, layer, gram_i, gram_j) with WᵀW; ``factor`` layers
fill ``gram_factor`` (step, layer, factor_row, gram_j) with W itself; ``spectrum`` layers
fill ``gram_eigenvalues`` (step, layer, gram_i). The ``gram_form`` and ``gram_rows``
coordinates record each layer's form and its weight's rows. A store written before
``--grams`` has no ``gram_form``: every layer is ``dense``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from flq_audit._gram_forms import (
    DENSE,
    FACTOR,
    FACTOR_ROW,
    GRAM,
    GRAM_EIGENVALUES,
    GRAM_FACTOR,
    GRAM_FORM,
    GRAM_ROWS,
    GRAM_VARIABLES,
    SPECTRUM,
    VARIABLE_OF,
    form_for,
    stored_forms,
)
from flq_audit.constants import GRAM_I, GRAM_J, LAYER, STEP
from flq_audit.store._records import LayerInfo

if TYPE_CHECKING:

    from flq_audit.store._schema import StoreLayout

def layer_form(grams: str, layer: LayerInfo) -> str:
    """The form of ``layer`` under ``--grams grams``."""
    rows = layer.gram_width if layer.gram_rows is None else layer.gram_rows
    return form_for(grams, rows, layer.gram_width)


def layout_forms(layout: StoreLayout) -> tuple[str, ...]:
    return tuple(layer_form(layout.grams, layer) for layer in layout.layers)


def factor_rows(layout: StoreLayout) -> int:
    """Length of the ``factor_row`` axis: the most rows of a factor-form layer (0: none)."""
    return max((layer.gram_rows or 0 for layer, form in zip(layout.layers, layout_forms(layout),
                                                            strict=True) if form == FACTOR),
               default=0)


#: ``(name, dims, shape, chunks, attrs)`` of one Gram variable.
GramArray = tuple[str, tuple[str, ...], tuple[int, ...], tuple[int, ...], dict[str, str]]


def gram_arrays(layout: StoreLayout) -> list[GramArray]:
    """``(name, dims, shape, chunks, attrs)`` of the Gram variables this layout fills."""
    forms = set(layout_forms(layout))
    n_steps, n_layers, width = len(layout.steps), len(layout.layers), layout.gram_max
    block = layout.gram_chunk
    out: list[GramArray] = []
    if DENSE in forms:
        out.append((GRAM, (STEP, LAYER, GRAM_I, GRAM_J), (n_steps, n_layers, width, width),
                    (1, 1, block, block), {
                        "long_name": "weight Gram W^T W in the layer's input space",
                        "units": "1", "description": "layers of gram_form 'dense'; NaN-padded "
                        "beyond gram_width(layer); conv kernels as C_out x C_in*k*k"}))
    if FACTOR in forms:
        rows = factor_rows(layout)
        out.append((GRAM_FACTOR, (STEP, LAYER, FACTOR_ROW, GRAM_J),
                    (n_steps, n_layers, rows, width), (1, 1, min(rows, block), block), {
                        "long_name": "weight W as a d_out x d_in matrix (its Gram is W^T W)",
                        "units": "1", "description": "layers of gram_form 'factor'; NaN-padded "
                        "beyond gram_rows(layer) x gram_width(layer); W^T W = "
                        "f.T @ f of the trimmed f"}))
    if SPECTRUM in forms:
        out.append((GRAM_EIGENVALUES, (STEP, LAYER, GRAM_I), (n_steps, n_layers, width),
                    (1, 1, width), {
                        "long_name": "eigenvalues of W^T W, descending", "units": "1",
                        "description": "layers of gram_form 'spectrum'; NaN beyond "
                        "gram_width(layer)"}))
    return out


def layer_values(layout: StoreLayout, layer: LayerInfo) -> int:
    """Values per step the layer's Gram takes in the store (whole chunks)."""
    form = layer_form(layout.grams, layer)
    if form == DENSE:
        return layout.gram_extent(layer.gram_width) ** 2
    if form == FACTOR:
        rows = factor_rows(layout)
        chunk = min(rows, layout.gram_chunk)
        return (min(rows, -(-(layer.gram_rows or 0) // chunk) * chunk)
                * layout.gram_extent(layer.gram_width))
    if form == SPECTRUM:
        return layout.gram_max
    return 0


__all__ = ["FACTOR_ROW", "GRAM", "GRAM_EIGENVALUES", "GRAM_FACTOR", "GRAM_FORM", "GRAM_ROWS",
           "GRAM_VARIABLES", "VARIABLE_OF", "factor_rows", "gram_arrays",
           "layer_form", "layer_values", "layout_forms", "stored_forms"]
