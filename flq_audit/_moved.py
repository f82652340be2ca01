"""The warning the read side's 0.2 module paths give on import (they moved into
:mod:`flq_audit.reading` and keep working for one release)."""

from __future__ import annotations

import warnings


def warn_moved(old: str, new: str = "flq_audit.reading") -> None:
    """A ``DeprecationWarning`` that ``old`` moved to ``new``, attributed to the line that
    imported ``old`` (``warnings`` skips the import machinery's frames)."""
    warnings.warn(f"{old} moved to {new}; import from {new} (the old path is removed in the "
                  "next release)", DeprecationWarning, stacklevel=3)
