"""Callback classes built on first use, so that importing flq-audit imports no trainer."""

from __future__ import annotations

from collections.abc import Callable


def lazy_class(module: str, name: str, mixin: type,
               base: Callable[[], type]) -> Callable[[str], type]:
    """A module ``__getattr__`` that builds ``name`` (``mixin`` + the class ``base()``
    imports) the first time it is asked for, and returns the same class afterwards."""
    made: dict[str, type] = {}

    def getattr_(attribute: str) -> type:
        if attribute != name:
            raise AttributeError(f"module {module!r} has no attribute {attribute!r}")
        if name not in made:
            made[name] = type(name, (mixin, base()), {"__module__": module,
                                                      "__doc__": mixin.__doc__})
        return made[name]

    return getattr_
