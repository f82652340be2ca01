"""Capture: which layers an audit reads, their weights as matrices, and the probe's replay.

- :mod:`~flq_audit.capture.layers`: layer discovery and ``--layers`` selection, layer widths;
- :mod:`~flq_audit.capture.params`: bare parameters used as layers by a tensor op;
- :mod:`~flq_audit.capture.grams`: a layer's weight as a ``d_out × d_in`` matrix and WᵀW;
- :mod:`~flq_audit.capture.replay`: the eval-mode forward pass that yields activations.
"""

from __future__ import annotations

from flq_audit.capture.grams import CONV1D_MODEL_TYPES, Layer, as_matrix, gram, gram_of_matrix, weight_matrix
from flq_audit.capture.layers import (
    discover_layers,
    layer_infos,
    parameter_layers,
    select_layers,
    weight_layer_infos,
)
from flq_audit.capture.params import ParameterLayer, ParameterUses, layers_of, weight_key
from flq_audit.capture.replay import (
    HIDDEN_STATE_KIND,
    HIDDEN_STATE_PREFIX,
    PREDICTION,
    output_classes,
    replay,
    resolve_device,
)

__all__ = [
    "CONV1D_MODEL_TYPES",
    "HIDDEN_STATE_KIND",
    "HIDDEN_STATE_PREFIX",
    "PREDICTION",
    "Layer",
    "ParameterLayer",
    "ParameterUses",
    "as_matrix",
    "discover_layers",
    "gram",
    "gram_of_matrix",
    "layer_infos",
    "layers_of",
    "output_classes",
    "parameter_layers",
    "replay",
    "resolve_device",
    "select_layers",
    "weight_key",
    "weight_layer_infos",
    "weight_matrix",
]
