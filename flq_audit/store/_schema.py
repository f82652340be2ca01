"""Schema of the audit store: names, the template Dataset, chunking and the fingerprint."""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from flq_audit._tags import TAGS_ATTR, merged_tags
from flq_audit.constants import (
    DEFAULT_CHUNK_BYTES,
    LAYER,
    SAMPLE,
    SCHEMA_VERSION,
    STEP,
    TARGET,
)
from flq_audit.store._grams import (
    GRAM_FORM,
    GRAM_ROWS,
    gram_arrays,
    layer_values,
    layout_forms,
)
from flq_audit.store._records import LayerInfo, ProbeSummary, VariableSpec
from flq_audit.store._variables import extension_encoding, extension_variables

if TYPE_CHECKING:
    import xarray as xr

ACTIVATIONS = "activations"
TARGETS = "targets"
DONE = "done"
ERROR = "error"
SHA256 = "sha256"
FILES = "files"

#: Feature columns (and Gram rows/columns) per chunk: layers of a model share few widths,
#: often multiples of 512, so narrower layers leave whole chunks unwritten.
FEATURE_BLOCK = 512

#: Characters the ``label`` and ``commit`` coordinates hold at least: steps appended later
#: (:mod:`flq_audit.store._grow`) must fit the width fixed at creation.
STEP_TEXT_WIDTH = 64

#: Attributes that must agree between a store and a rerun that resumes it.
FINGERPRINT_KEYS = ("source", "probe_fingerprint", "layers", "capture_config")


@dataclass(frozen=True)
class StoreLayout:
    """Everything needed to write the empty store before any checkpoint is read."""

    source: str
    steps: tuple[int, ...]
    labels: tuple[str, ...]
    commits: tuple[str, ...]
    layers: tuple[LayerInfo, ...]
    probe: ProbeSummary | None  # None: a weights-only audit (Grams, no activations)
    capture_config: dict[str, Any] = field(default_factory=dict)
    activation_dtype: str = "float32"
    gram_dtype: str = "float32"
    #: ``--grams``: what is kept of each layer's Gram (:mod:`flq_audit.store._grams`).
    grams: str = "full"
    chunk_bytes: int = DEFAULT_CHUNK_BYTES
    duplicates: tuple[tuple[int, int], ...] = ()  # (step, earlier step with identical files)
    variables: tuple[VariableSpec, ...] = ()  # declared by the audit's step extensions
    attrs: tuple[tuple[str, str], ...] = ()  # store attributes the extensions set
    #: ``--tag KEY=VALUE`` pairs (:mod:`flq_audit._tags`): merged into the ``tags``
    #: attribute by every writer as it finishes; not part of the fingerprint.
    tags: tuple[tuple[str, Any], ...] = ()
    #: The steps this audit writes (empty: all of ``steps``, which lays out every step the
    #: source lists, audited or not).
    selected: tuple[int, ...] = ()

    @property
    def written(self) -> tuple[int, ...]:
        """The steps this audit writes."""
        return self.selected or self.steps

    @property
    def feature_max(self) -> int:
        return max(layer.width for layer in self.layers)

    @property
    def gram_max(self) -> int:
        return max(layer.gram_width for layer in self.layers)

    @property
    def feature_chunk(self) -> int:
        """Feature columns per activation chunk: narrow layers' padding lies in whole chunks
        that are never written (zarr stores no chunk equal to the NaN fill) nor read."""
        return min(self.feature_max, FEATURE_BLOCK)

    @property
    def gram_chunk(self) -> int:
        """Rows and columns per Gram chunk (``gram_chunk² · itemsize`` bytes: 1 MiB in
        float32), so a narrow layer's Gram fills only the chunks that hold its values."""
        return min(self.gram_max, FEATURE_BLOCK)

    @property
    def sample_chunk(self) -> int:
        """Rows per activation chunk: about ``chunk_bytes`` per chunk of ``feature_chunk``
        columns (one step, one layer)."""
        if self.probe is None:
            return 0
        itemsize = np.dtype(self.activation_dtype).itemsize
        rows = max(1, self.chunk_bytes // (self.feature_chunk * itemsize))
        return int(min(rows, self.probe.n_samples))

    def feature_extent(self, width: int) -> int:
        """Columns written for a layer of ``width`` features: whole chunks, never beyond."""
        return _whole_chunks(width, self.feature_chunk, self.feature_max)

    def gram_extent(self, width: int) -> int:
        """Rows (and columns) written for a Gram of ``width``: whole chunks."""
        return _whole_chunks(width, self.gram_chunk, self.gram_max)

    def fingerprint(self) -> dict[str, str]:
        """The attributes compared on resume, as JSON strings.

        A model file is named by its content hash, not by the path as typed, so a run from
        another directory or with an absolute path resumes the same store.
        """
        return {
            "source": self.source,
            "probe_fingerprint": "none" if self.probe is None else self.probe.fingerprint,
            "layers": json.dumps([layer.identity() for layer in self.layers]),
            "capture_config": json.dumps(_identified(self.capture_config), sort_keys=True),
        }

    def estimated_bytes(self, n_steps: int | None = None) -> int:
        """Uncompressed size of the activation and Gram chunks written for ``n_steps`` steps
        (default: the steps this audit writes; padding chunks of narrow layers are not stored)."""
        n_steps = len(self.written) if n_steps is None else n_steps
        return n_steps * sum(self.bytes_per_step().values())

    def bytes_per_step(self) -> dict[str, int]:
        """Uncompressed bytes one step writes: ``activations`` and ``grams`` (every form)."""
        n = 0 if self.probe is None else self.probe.n_samples
        act = n * sum(self.feature_extent(la.width) for la in self.layers)
        grams = sum(layer_values(self, la) for la in self.layers)
        return {"activations": act * np.dtype(self.activation_dtype).itemsize,
                "grams": grams * np.dtype(self.gram_dtype).itemsize}


def _whole_chunks(width: int, chunk: int, size: int) -> int:
    return min(size, -(-width // chunk) * chunk)


@dataclass(frozen=True)
class Template:
    """The store's coordinates, small data variables and attributes as plain arrays.

    ``coords`` and ``data_vars`` map names to ``(dims, values, attrs)``, as the
    :class:`xarray.Dataset` constructor takes them (:meth:`to_dataset`); building no
    xarray object keeps dask (which xarray imports for every new variable) out of the audit.
    """

    coords: dict[str, tuple[tuple[str, ...], np.ndarray, dict[str, Any]]]
    data_vars: dict[str, tuple[tuple[str, ...], np.ndarray, dict[str, Any]]]
    attrs: dict[str, Any]

    def coordinates_on(self, dims: Sequence[str]) -> str:
        """The CF ``coordinates`` attribute xarray writes on a variable with ``dims``: the
        non-index coordinates whose dimensions it has, sorted by name."""
        return " ".join(sorted(name for name, (coord_dims, _, _) in self.coords.items()
                               if coord_dims != (name,) and set(coord_dims) <= set(dims)))

    def to_dataset(self) -> xr.Dataset:
        import xarray as xr

        return xr.Dataset(self.data_vars, coords=self.coords, attrs=self.attrs)


def template(layout: StoreLayout, *, version: str) -> Template:
    """The store's coordinates, attributes and small arrays, written whole at creation.

    The big data arrays (Grams, activations, extension variables) are not in it: they hold
    only their fill value until steps are written, and
    :func:`flq_audit.store._template.write_template` declares them directly with zarr.
    """
    n_steps, n_layers = len(layout.steps), len(layout.layers)
    data_vars: dict[str, Any] = {
        DONE: ((STEP,), np.zeros(n_steps, dtype=bool), {
            "description": "1 once every array of the step is written",
        }),
        ERROR: ((STEP,), _strings([""] * n_steps), {
            "description": "why the step failed; empty when it did not",
        }),
        SHA256: ((STEP,), _strings([""] * n_steps), {"description": "sha256 of each file (JSON)"}),
        FILES: ((STEP,), _strings([""] * n_steps), {"description": "checkpoint files (JSON)"}),
        "duplicate_of": ((STEP,), _duplicate_of(layout), {
            "description": "earlier step whose weight files are byte-identical (-1: none); "
            "its data is copied, not recomputed",
        }),
    }
    coords: dict[str, Any] = {
        STEP: ((STEP,), np.asarray(layout.steps, dtype=np.int64), {}),
        "label": ((STEP,), coordinate_strings([safe_text(label) for label in layout.labels],
                                              width=STEP_TEXT_WIDTH), {}),
        "commit": ((STEP,), coordinate_strings([safe_text(c) for c in layout.commits],
                                               width=STEP_TEXT_WIDTH), {}),
        LAYER: ((LAYER,), coordinate_strings([layer.name for layer in layout.layers]), {}),
        "layer_kind": ((LAYER,), coordinate_strings([layer.kind for layer in layout.layers]), {}),
        "depth": ((LAYER,), np.arange(n_layers, dtype=np.int64), {}),
        "width": ((LAYER,), np.asarray([la.width for la in layout.layers], dtype=np.int64), {}),
        "gram_width": (
            (LAYER,), np.asarray([la.gram_width for la in layout.layers], dtype=np.int64), {}
        ),
        GRAM_FORM: ((LAYER,), coordinate_strings(list(layout_forms(layout))), {
            "description": "how the layer's Gram is stored: dense (gram), factor "
            "(gram_factor), spectrum (gram_eigenvalues) or none"}),
        GRAM_ROWS: ((LAYER,), np.asarray([la.gram_width if la.gram_rows is None else la.gram_rows
                                          for la in layout.layers], dtype=np.int64), {
            "description": "rows of the layer's weight as a matrix (d_out)"}),
    }
    attrs: dict[str, Any] = {
        "Conventions": "CF-1.8 flq-audit-1",
        "title": f"flq-audit store of {layout.source}",
        "schema_version": SCHEMA_VERSION,
        "flq_audit_version": version,
        "probe": "null",
        **layout.fingerprint(),
        **dict(layout.attrs),
        **({TAGS_ATTR: merged_tags({}, layout.tags)} if layout.tags else {}),
    }
    if layout.probe is not None:
        _add_probe(layout, data_vars, coords, attrs)
    data_vars.update(extension_variables(layout))
    return Template(coords=coords, data_vars=data_vars, attrs=attrs)


def _duplicate_of(layout: StoreLayout) -> np.ndarray:
    mapping = dict(layout.duplicates)
    return np.asarray([mapping.get(step, -1) for step in layout.steps], dtype=np.int64)


def _add_probe(layout: StoreLayout, data_vars: dict, coords: dict, attrs: dict) -> None:
    """Targets and the sample axis (absent from weights-only stores)."""
    probe = layout.probe
    assert probe is not None
    n = probe.n_samples
    data_vars[TARGETS] = ((SAMPLE, TARGET), probe.targets.astype(np.float64), {
        "long_name": "probe targets (one-hot classes or continuous)", "kind": probe.kind,
    })
    coords[SAMPLE] = ((SAMPLE,), np.arange(n, dtype=np.int64), {})
    if probe.labels is not None:
        coords["class_label"] = ((SAMPLE,), probe.labels.astype(np.int64), {})
    names = getattr(probe, "class_names", None)
    attrs["probe"] = json.dumps({
        "name": probe.name, "fingerprint": probe.fingerprint, "n_samples": n,
        "kind": probe.kind, "num_classes": probe.num_classes,
        **({"class_names": names} if names else {}),
    })


def encoding(layout: StoreLayout) -> dict[str, dict[str, Any]]:
    """Chunk encoding aligned with writes: one step, one layer, a block of samples and
    of features (activations); square blocks of a Gram."""
    acts = {ACTIVATIONS: {
        "chunks": (1, 1, layout.sample_chunk, layout.feature_chunk), "_FillValue": np.nan,
        "compressors": [_fast_codec()],
    }} if layout.probe is not None else {}
    grams = {name: {"chunks": chunks, "_FillValue": np.nan}
             for name, _, _, chunks, _ in gram_arrays(layout)}
    return {**extension_encoding(layout), **acts, **grams,
            STEP: {"chunks": (max(1, len(layout.steps)),)}}


def _fast_codec():
    """Blosc-LZ4 with bit shuffle: smaller than byte shuffle on float activations and
    cheaper than Zstandard (benchmarks/bench_chunks.py; docs/store.md has the figures)."""
    from zarr.codecs import BloscCodec

    return BloscCodec(cname="lz4", clevel=5, shuffle="bitshuffle")


def model_file(model: str) -> tuple[str, str | None]:
    """``(model with its file resolved to an absolute path, the file's sha256)`` for a model
    file (a JSON spec or ``file.py:fn``); ``(model, None)`` for anything else."""
    import hashlib
    from pathlib import Path

    path_text, sep, function = model.rpartition(":") if ".py:" in model else (model, "", "")
    path = Path(path_text).expanduser()
    if not path.suffix or not path.is_file():
        return model, None
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return str(path.resolve()) + sep + function, digest


def _identified(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` with the model file resolved and its content hash as ``model_sha256``."""
    if not isinstance(config.get("model"), str) or "model_sha256" in config:
        return config
    model, digest = model_file(config["model"])
    return {**config, "model": model, **({"model_sha256": digest} if digest else {})}


def fingerprint_differences(stored: dict[str, Any], wanted: dict[str, str]) -> list[str]:
    """Each differing field of a store's attrs and a new run's fingerprint, values in full.

    A model file is compared by content (``model_sha256``), not by where it lies.
    """
    diffs = []
    for key in FINGERPRINT_KEYS:
        old, new = stored.get(key), wanted[key]
        if old == new:
            continue
        try:
            old_fields, new_fields = json.loads(str(old)), json.loads(new)
        except ValueError:
            old_fields = new_fields = None
        if not (isinstance(old_fields, dict) and isinstance(new_fields, dict)):
            diffs.append(f"{key}: stored {old!r}, now {new!r}")
            continue
        if key == "capture_config":
            old_fields = _identified(old_fields)
            if old_fields.get("model_sha256") and new_fields.get("model_sha256"):
                old_fields.pop("model"), new_fields.pop("model")
        for name in sorted(set(old_fields) | set(new_fields)):
            if old_fields.get(name) != new_fields.get(name):
                diffs.append(f"{key}.{name}: stored {json.dumps(old_fields.get(name))}, "
                             f"now {json.dumps(new_fields.get(name))}")
    return diffs


def safe_text(text: str) -> str:
    """``text`` as valid UTF-8: bytes of a non-UTF-8 file name become ``\\xNN`` escapes."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _strings(values: Sequence[str]) -> np.ndarray:
    """Variable-length strings (object dtype): for values written step by step."""
    return np.asarray(list(values), dtype=object)


def coordinate_strings(values: Sequence[str], *, width: int = 1) -> np.ndarray:
    """Fixed-width strings (``<U``): plain ``xr.open_zarr`` reads them back as ``<U``, so
    xarray plotting, ``.sel`` and ``.to_pandas()`` work on the store as on the NetCDF export
    (variable-length strings read back as NumPy ``StringDType``, which they reject).

    Zarr warns that fixed-width strings have no v3 specification yet (a Zarr-Python
    extension); the store is written under :func:`fixed_width_strings_allowed`. ``width``:
    the least number of characters the array holds (step coordinates keep room for the
    labels of steps appended later).
    """
    texts = [str(v) for v in values]
    return np.asarray(texts, dtype=f"<U{max([width, *map(len, texts)])}")


@contextmanager
def fixed_width_strings_allowed() -> Iterator[None]:
    """Silence Zarr's ``UnstableSpecificationWarning`` for the ``<U`` coordinates only."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=r".*FixedLengthUTF32", category=FutureWarning)
        yield


def plain_string_coordinates(ds: xr.Dataset) -> xr.Dataset:
    """``ds`` with NumPy ``StringDType`` coordinates (stores written by flq-audit 0.1, whose
    coordinates are variable-length strings) as fixed-width ``<U`` strings."""
    old = [name for name, coord in ds.coords.items() if coord.dtype.kind == "T"]
    if not old:
        return ds
    return ds.assign_coords({
        name: (ds[name].dims, np.asarray(ds[name].values, dtype=object).astype(str),
               ds[name].attrs)
        for name in old})
