"""The warning the read side's 0.2 module paths give on import (they moved into
:mod:`flq_audit.reading` and keep working for one release)."""

from __future__ import annotations

import sys
import warnings


def warn_moved(old: str, new: str = "flq_audit.reading") -> None:
    """A ``DeprecationWarning`` that ``old`` moved to ``new``, attributed to the line that
    imported ``old`` (the import machinery's frames are skipped)."""
    frame = sys._getframe(2)  # the frame that runs the import of ``old``
    level = 3
    while frame.f_back is not None and frame.f_code.co_filename.startswith("<frozen importlib"):
        frame = frame.f_back
        level += 1
    warnings.warn(f"{old} moved to {new}; import from {new} (the old path is removed in the "
                  "next release)", DeprecationWarning, stacklevel=level)
