"""Constants and the one place where ``FLQ_AUDIT_*`` environment variables are read."""

from __future__ import annotations

import os

#: 2: the step axis lays out every step the source listed at creation and grows at its end
#: (1: the selected steps only; still read, and grown the same way).
SCHEMA_VERSION = 2

# Dimension names of the store, defined once.
STEP = "step"
LAYER = "layer"
SAMPLE = "sample"
FEATURE = "feature"
GRAM_I = "gram_i"
GRAM_J = "gram_j"
TARGET = "target"

# Chunking: write-aligned activation chunks of about this many bytes. 4 MiB keeps the
# writer's memory flat as the probe grows (one chunk per layer plus a few in flight) while
# the per-chunk cost of zarr's write path stays small next to compressing and storing it
# (1 MiB chunks cost 2.4x the CPU per byte written); object stores prefer them too.
DEFAULT_CHUNK_BYTES = int(os.environ.get("FLQ_AUDIT_CHUNK_BYTES", 4 * 2**20))

# Checkpoint file conventions.
SAFETENSORS_EXTENSIONS = (".safetensors",)
PICKLE_EXTENSIONS = (".pt", ".pth", ".bin", ".ckpt")
WEIGHT_EXTENSIONS = SAFETENSORS_EXTENSIONS + PICKLE_EXTENSIONS
SAFETENSORS_INDEX_FILE = "model.safetensors.index.json"
PICKLE_INDEX_FILE = "pytorch_model.bin.index.json"
SAFETENSORS_SINGLE_FILE = "model.safetensors"
PICKLE_SINGLE_FILE = "pytorch_model.bin"
NESTED_STATE_DICT_KEYS = ("model", "state_dict", "model_state_dict", "module", "net")
# Files that live beside checkpoints but are not model weights.
NON_WEIGHT_STEMS = (
    "optimizer", "optim", "scheduler", "rng_state", "training_args", "trainer_state", "scaler",
)

# Reference convention for the optional PCA in Target Linearity
# (docs/concepts.md#optional-pca-reference-convention).
DEFAULT_PCA_THRESHOLD = 1000
# Relative eigenvalue cutoff for rank-revealing pseudo-inverses (docs/concepts.md#numerical-method).
RANK_RTOL = 1e-12
