"""Declarative metric specs and the registry (built-ins, ``register_metric``, entry points)."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from flq_audit._gram_forms import DENSE, FACTOR, DenseGram, GramForm
from flq_audit.errors import FlqAuditWarning, OptionError
from flq_audit.metrics._kernels.moments import DualMoments, Moments, QRFactor

ENTRY_POINT_GROUP = "flq_audit.metrics"
#: What a spec may need from the store or from other groups.
INPUTS = frozenset({"moments", "gram", "classifier", "predictions"})


@dataclass(frozen=True)
class Output:
    """One stored variable of a group: its description, units and extra dimensions.

    ``record``: a count or bookkeeping value that qualifies another output (the samples or
    rank a fit rests on); tables of values leave records out, JSON, CSV and TSV keep them.
    """

    long_name: str
    units: str | None = None
    dims: tuple[str, ...] = ()
    sizes: Mapping[str, int] = field(default_factory=dict)
    reference: str | None = None
    record: bool = False

    def attrs(self) -> dict[str, Any]:
        out: dict[str, Any] = {"long_name": self.long_name}
        if self.units is not None:
            out["units"] = self.units
        if self.reference is not None:
            out["reference"] = self.reference
        return out


@dataclass(frozen=True)
class Block:
    """What a kernel sees for one (step, layer): float64 moments and the Gram in its stored
    form (:class:`~flq_audit._gram_forms.GramForm`; a dense array given here is wrapped),
    sliced to width. ``moments`` is a :class:`DualMoments` only for specs that declare
    ``dual``, a :class:`QRFactor` only for those that declare ``qr``. Kernels that ask
    ``form`` for what they need (its trace, ``tr(MᵀGM)``, its eigenvalues) work on every
    form; :attr:`gram` forms ``WᵀW`` itself."""

    moments: Moments | DualMoments | QRFactor | None
    form: GramForm | None
    width: int
    gram_width: int

    def __post_init__(self) -> None:
        if self.form is not None and not isinstance(self.form, GramForm):
            object.__setattr__(self, "form", DenseGram(self.form))

    @property
    def gram(self) -> npt.NDArray[np.float64] | None:
        """``WᵀW`` (``gram_width × gram_width``), formed from a factor when so stored."""
        return None if self.form is None else self.form.dense()


Kernel = Callable[[Block, Any], tuple[Any, ...]]


@dataclass(frozen=True)
class MetricSpec:
    """A metric group: what it needs, its parameters, its outputs and how to compute them.

    ``kernel(block, options)`` is a pure numpy function of one (step, layer) block returning
    one value per output (an array for outputs with extra ``dims``). ``build(ds, context)``
    adds lazy variables that are not per-block (e.g. a drift between steps, or a group built
    from another group's computed values: ``needs`` then names that group).

    ``per_step``: each (step, layer) value depends on that step's data only, so that when
    steps are added only the new steps are computed and the stored ones are kept; outputs
    named in ``trajectory`` (kernel or ``build`` outputs: a drift to the previous step, a
    cosine to the final one) use other steps and are recomputed over every done step. The
    default (``False``) recomputes the whole group whenever the done steps change: the safe
    choice for a spec that does not say.
    """

    group: str
    needs: frozenset[str]
    outputs: Mapping[str, Output]
    kernel: Kernel | None = None
    options: type | None = None
    description: str = ""
    build: Callable[..., Any] | None = None
    #: ``dual(options)``: whether the kernel also accepts the dual form
    #: (:class:`~flq_audit.metrics._kernels.moments.DualMoments`) for layers wider than the
    #: probe; ``None``: it always needs the primal moments.
    dual: Callable[[Any], bool] | None = None
    #: ``qr(options)``: whether the kernel takes, for primal layers, the QR factor of
    #: ``[H | Y_c]`` (:class:`~flq_audit.metrics._kernels.moments.QRFactor`: least squares
    #: without squaring the condition number) instead of the moments; ``None``: moments.
    qr: Callable[[Any], bool] | None = None
    per_step: bool = False
    trajectory: frozenset[str] = frozenset()
    #: The stored Gram forms (``--grams``) the kernel computes from, for specs that need
    #: ``gram``: the whole Gram by default (dense or factor); a spectral kernel that asks
    #: its block only for eigenvalues adds ``"spectrum"``.
    gram_forms: frozenset[str] = frozenset({DENSE, FACTOR})

    def __post_init__(self) -> None:
        if not self.group.isidentifier():
            raise OptionError(f"metric group name must be an identifier, got {self.group!r}")
        object.__setattr__(self, "trajectory", frozenset(self.trajectory))
        if self.kernel is None and self.build is None:
            raise OptionError(f"metric {self.group!r} needs a kernel or a build function")
        object.__setattr__(self, "needs", frozenset(self.needs))
        object.__setattr__(self, "gram_forms", frozenset(self.gram_forms))

    def accepts_dual(self, options: object) -> bool:
        """Whether this group, with these options, can read the dual form."""
        return self.dual is not None and bool(self.dual(options))

    def wants_qr(self, options: object) -> bool:
        """Whether this group, with these options, reads primal layers as QR factors."""
        return self.qr is not None and bool(self.qr(options))

    def make_options(self, given: Mapping[str, object]) -> object | None:
        """This group's options object from the parameters given (the defaults otherwise)."""
        if self.options is None:
            return None
        return self.options(**given)


_REGISTRY: dict[str, MetricSpec] = {}
_ENTRY_POINTS_LOADED = False


def register_metric(spec: MetricSpec, *, replace: bool = False) -> MetricSpec:
    """Add a metric group; ``flq-audit metrics --metric GROUP`` then computes and stores it."""
    unknown = spec.needs - INPUTS - set(_REGISTRY)
    if unknown:
        raise OptionError(f"metric {spec.group!r} needs {sorted(unknown)}; known inputs: "
                          f"{sorted(INPUTS)} and the groups {sorted(_REGISTRY)}")
    if spec.group in _REGISTRY and not replace and _REGISTRY[spec.group] is not spec:
        raise OptionError(f"metric group {spec.group!r} is already registered")
    _REGISTRY[spec.group] = spec
    return spec


def _load_entry_points() -> None:
    """Register the specs that installed packages declare under ``flq_audit.metrics``."""
    global _ENTRY_POINTS_LOADED
    if _ENTRY_POINTS_LOADED:
        return
    _ENTRY_POINTS_LOADED = True
    from importlib.metadata import entry_points

    for point in entry_points(group=ENTRY_POINT_GROUP):
        try:
            spec = point.load()
            spec = spec() if callable(spec) and not isinstance(spec, MetricSpec) else spec
            if not isinstance(spec, MetricSpec):
                raise TypeError(f"{point.value} is not a MetricSpec")
            if spec.group not in _REGISTRY:
                register_metric(spec)
        except Exception as err:  # a broken plugin must not break the built-ins
            warnings.warn(f"metric plugin {point.name!r} ({point.value}) not loaded: {err}",
                          FlqAuditWarning, stacklevel=2)


def registry() -> dict[str, MetricSpec]:
    """Every registered group (built-ins first, then plugins), by name."""
    from flq_audit.metrics import _builtin  # noqa: F401  (registers the built-ins)

    _load_entry_points()
    return dict(_REGISTRY)


def is_record(attrs: Mapping[str, Any]) -> bool:
    """Whether a computed variable (by its ``flq_group`` and ``flq_output`` attributes) is a
    record of its group (:attr:`Output.record`) rather than a value to tabulate."""
    spec = registry().get(str(attrs.get("flq_group", "")))
    output = spec.outputs.get(str(attrs.get("flq_output", ""))) if spec is not None else None
    return bool(output is not None and output.record)


def get_spec(group: str) -> MetricSpec:
    specs = registry()
    if group not in specs:
        raise OptionError(f"unknown metric(s) [{group!r}]; available: {list(specs)}")
    return specs[group]


__all__ = ["ENTRY_POINT_GROUP", "Block", "MetricSpec", "Output", "get_spec", "is_record",
           "register_metric", "registry"]
