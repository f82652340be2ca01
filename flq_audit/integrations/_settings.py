"""What an in-training audit writes: one store, one set of options, one step at a time.

This module imports neither torch nor a trainer: the settings cross a process boundary
(pickled) and the step audit imports the pipeline only when it runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flq_audit.errors import FlqAuditError
from flq_audit.options import DEFAULT_CAPTURE, DEFAULT_RUN, CaptureOptions, RunOptions, SourceOptions

if TYPE_CHECKING:
    from flq_audit.audit.extensions.fl_inputs import FLOptions
    from flq_audit.audit.step import AuditResult
    from flq_audit.options import TextProbeOptions


@dataclass(frozen=True, kw_only=True)
class AuditSettings:
    """The audit of one checkpoint folder into one store, as ``flq-audit FOLDER --out STORE``
    with the same options (``model`` and ``probe`` as ``--model`` and ``--probe`` take them).

    Every step is audited by ``flq_audit.api.plan_audit(folder, steps=STEP, ...)`` and
    ``run_audit``, so the store equals what ``flq-audit FOLDER --steps all`` writes.
    """

    folder: str
    store: str
    model: str | None = None
    probe: str | None = None
    weights_only: bool = False
    capture: CaptureOptions = DEFAULT_CAPTURE
    run: RunOptions = DEFAULT_RUN
    source: SourceOptions | None = None
    text: TextProbeOptions | None = None
    fl: FLOptions | None = None
    storage_options: dict[str, Any] | None = field(default=None, hash=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "folder", str(Path(self.folder).expanduser().resolve()))
        if "://" not in str(self.store):  # a local store: fixed now, not at the worker's cwd
            object.__setattr__(self, "store", str(Path(self.store).expanduser().resolve()))
        for name in ("model", "probe"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, str(value))


def audit_step(settings: AuditSettings, step: int) -> AuditResult:
    """Audit ``step`` of the settings' folder into their store; a step the store marks
    failed raises a :class:`~flq_audit.errors.FlqAuditError` naming it."""
    from flq_audit import api

    plan = api.plan_audit(
        settings.folder, steps=str(step), model=settings.model, probe=settings.probe,
        weights_only=settings.weights_only, out=settings.store,
        storage_options=settings.storage_options, capture=settings.capture,
        hub=settings.source, text=settings.text, fl=settings.fl, run=settings.run)
    result = api.run_audit(plan, settings.run)
    if step in result.failed:
        raise FlqAuditError(f"step {step}: {result.failed[step]}", step=step,
                            path=settings.folder)
    return result


def step_error(step: int, folder: str, err: BaseException) -> dict[str, Any]:
    """A failed step as a plain record (it crosses the process boundary as JSON)."""
    if isinstance(err, FlqAuditError):
        record = err.to_dict()
    else:  # not an audit error: keep its type and first line
        first = (str(err).strip().splitlines() or [""])[0]
        record = {"type": "FlqAuditError", "message": f"{type(err).__name__}: {first}",
                  "path": None, "step": step, "layer": None, "hint": None}
    record["step"] = step
    record["folder"] = folder
    return record


def error_from_records(records: list[dict[str, Any]], store: str) -> FlqAuditError:
    """One error for the failed steps, of the first failure's class, naming every step."""
    import flq_audit.errors as errors

    first = records[0]
    cls = getattr(errors, str(first.get("type")), None)
    if not (isinstance(cls, type) and issubclass(cls, FlqAuditError)):
        cls = FlqAuditError
    lines = [f"step {r['step']} ({r['folder']}): {r['message']}" for r in records]
    steps = ", ".join(str(r["step"]) for r in records)
    err = cls(f"the audit into {store!r} failed at step(s) {steps}:\n  " + "\n  ".join(lines),
              path=first.get("path"), step=first["step"], layer=first.get("layer"),
              hint=first.get("hint"))
    return err


__all__ = ["AuditSettings", "audit_step", "error_from_records", "step_error"]
