"""The warning a moved module's 0.2 path gives on import (the read side moved into
:mod:`flq_audit.reading`, the parameter layers into :mod:`flq_audit.capture.params`); old
paths keep working for one release."""

from __future__ import annotations

import warnings


def warn_moved(old: str, new: str = "flq_audit.reading") -> None:
    """A ``DeprecationWarning`` that ``old`` moved to ``new``, attributed to the line that
    imported ``old`` (``warnings`` skips the import machinery's frames)."""
    warnings.warn(f"{old} moved to {new}; import from {new} (the old path is removed in the "
                  "next release)", DeprecationWarning, stacklevel=3)
