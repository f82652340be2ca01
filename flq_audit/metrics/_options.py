"""Typed, self-validating parameters of the metric groups."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, is_dataclass
from typing import Any, Literal

from flq_audit.constants import DEFAULT_PCA_THRESHOLD
from flq_audit.errors import OptionError

DENOMINATORS = ("column", "row")


@dataclass(frozen=True)
class TLOptions:
    """Parameters of Target Linearity (and of the ``dynamics`` group built on it).

    ``pca``: project layers wider than ``pca_threshold`` onto their top ``pca`` principal
    directions (``None``: no projection); ``ridge``: λ ≥ 0 of the fit; ``denominator``:
    ``"column"`` (the paper's ‖Y − Ȳ‖²) or ``"row"`` (the reference code's row-centred form).
    See docs/concepts.md#target-linearity.
    """

    pca: int | None = None
    pca_threshold: int = DEFAULT_PCA_THRESHOLD
    ridge: float = 0.0
    denominator: Literal["column", "row"] = "column"

    def __post_init__(self) -> None:
        if self.pca is not None and (not isinstance(self.pca, int) or self.pca < 1):
            raise OptionError(f"pca must be an integer >= 1 or None, got {self.pca!r}")
        if not isinstance(self.pca_threshold, int) or self.pca_threshold < 1:
            raise OptionError(f"pca_threshold must be an integer >= 1, got {self.pca_threshold!r}")
        if not isinstance(self.ridge, int | float) or not self.ridge >= 0:
            raise OptionError(f"ridge must be a number >= 0, got {self.ridge!r}")
        if self.denominator not in DENOMINATORS:
            raise OptionError(
                f"denominator must be one of {list(DENOMINATORS)}, got {self.denominator!r}")
        object.__setattr__(self, "ridge", float(self.ridge))

    def to_attrs(self) -> dict[str, Any]:
        """Attribute form (``pca = -1`` for no projection: NetCDF has no null)."""
        return {"pca": -1 if self.pca is None else int(self.pca),
                "pca_threshold": int(self.pca_threshold), "ridge": float(self.ridge),
                "denominator": self.denominator}

    @classmethod
    def from_attrs(cls, attrs: Mapping[str, Any]) -> TLOptions:
        """Read the parameters back from a variable's attributes (0.1 stores included)."""
        pca = int(attrs.get("pca", -1))
        return cls(pca=None if pca < 0 else pca,
                   pca_threshold=int(attrs.get("pca_threshold", DEFAULT_PCA_THRESHOLD)),
                   ridge=float(attrs.get("ridge", 0.0)),
                   # a str: __post_init__ refuses anything but "column" and "row"
                   denominator=str(attrs.get("denominator", "column")))  # type: ignore[arg-type]  # checked

    @property
    def suffix(self) -> str:
        """Variable-name suffix: ``""`` for the defaults, else e.g. ``"__pca256_ridge0.1"``."""
        parts = []
        if self.pca is not None:
            parts.append(f"pca{self.pca}" + ("" if self.pca_threshold == DEFAULT_PCA_THRESHOLD
                                              else f"t{self.pca_threshold}"))
        if self.ridge:
            parts.append(f"ridge{self.ridge:g}")
        if self.denominator == "row":
            parts.append("rowden")
        return "__" + "_".join(parts) if parts else ""


def options_attrs(options: object | None) -> dict[str, Any]:
    """The attribute form of any options object (a dataclass, or one with ``to_attrs``)."""
    if options is None:
        return {}
    to_attrs = getattr(options, "to_attrs", None)
    if callable(to_attrs):
        return dict(to_attrs())
    if not is_dataclass(options) or isinstance(options, type):
        raise TypeError(f"options must be a dataclass instance or have to_attrs(), got "
                        f"{type(options).__name__}")
    return dict(asdict(options))


def options_suffix(options: object | None) -> str:
    return str(getattr(options, "suffix", "")) if options is not None else ""


def parameter_set_id(params: Mapping[str, Any]) -> str:
    """A short stable id of a parameter set (sha256 of its canonical JSON)."""
    text = json.dumps(dict(params), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


__all__ = ["DENOMINATORS", "TLOptions", "options_attrs", "options_suffix", "parameter_set_id"]
