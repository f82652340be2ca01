"""Whether the FL residual's checkpoints were plain SGD steps: one rule for the audit and
the report.

``fl_r_step`` is 0 for a plain SGD step (up to the rounding of the stored weights); its
median over (step, layer) above :data:`R_STEP_SGD_LIMIT` says the updates were not
``η·∇_W L`` on the recorded batches (momentum, Adam, weight decay, ...). Pure NumPy: the
audit calls it once its steps are written, the report on the stored values.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: fl_r_step is 0 for a plain SGD step (up to the rounding of the stored weights); a median
#: above this says the checkpoints are not plain SGD steps on the recorded batches.
R_STEP_SGD_LIMIT = 0.05


@dataclass(frozen=True)
class FLStepDiagnosis:
    """What ``fl_r_step`` says: ``plain_sgd`` (``None``: no finite value) and the sentences."""

    plain_sgd: bool | None
    lines: tuple[str, ...] = ()


def diagnose_fl_steps(r_step: np.ndarray) -> FLStepDiagnosis:
    """The diagnosis of ``fl_r_step`` values laid out as (step, layer)."""
    r_step = np.asarray(r_step, dtype=float)
    finite = r_step[np.isfinite(r_step)]
    if finite.size == 0:
        return FLStepDiagnosis(None)
    median = float(np.median(finite))
    if median <= R_STEP_SGD_LIMIT:
        return FLStepDiagnosis(True, (
            f"FL: median fl_r_step = {median:.2g} (plain SGD gives 0 up to the rounding of "
            "the stored weights): the checkpoints are plain SGD steps on the recorded "
            "batches, so fl_residual tests Theorem 1",))
    lines = [f"FL: the checkpoints are not plain SGD steps on the recorded batches: median "
             f"fl_r_step = {median:.2g} (range {finite.min():.2g} to {finite.max():.2g}; plain "
             f"SGD gives 0 up to the rounding of the stored weights, flagged above "
             f"{R_STEP_SGD_LIMIT:g}). The update was not η·∇_W L on that batch (momentum, "
             "Adam, weight decay, clipping, another lr or batch, or checkpoints several steps "
             "apart), so fl_r_vcs and fl_residual measure the optimizer, not Theorem 1; "
             "fl_gram_change and gram_drift remain meaningful"]
    rows = [row[np.isfinite(row)] for row in r_step.reshape(r_step.shape[0], -1)]
    rows = [row for row in rows if row.size]
    if len(rows) >= 3 and np.median(rows[0]) <= R_STEP_SGD_LIMIT and all(
            np.median(row) > R_STEP_SGD_LIMIT for row in rows[1:]):
        lines.append("FL: the first update is plain SGD and the later ones are not: the "
                     "signature of momentum, whose buffer starts empty")
    return FLStepDiagnosis(False, tuple(lines))


__all__ = ["R_STEP_SGD_LIMIT", "FLStepDiagnosis", "diagnose_fl_steps"]
