"""Per-step extensions of an audit (one file each) and their protocol."""

from __future__ import annotations

from flq_audit.audit.extensions.base import Extension, StepContext, StepExtension, stack_padded

__all__ = ["Extension", "StepContext", "StepExtension", "stack_padded"]
