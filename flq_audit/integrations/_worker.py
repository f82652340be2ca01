"""The audit worker: one long-lived process that audits the steps handed to it, in order.

The training process only writes a step number to the worker's input (a pipe), so a step's
audit costs the training loop nothing but that hand-over. The worker is a fresh interpreter
(``python -m flq_audit.integrations._child``), not a fork and not a ``multiprocessing`` spawn:
it shares no state with the trainer (RNG, CUDA context, threads) and never re-runs the
training script. Failures come back as records and are raised (or warned) at :meth:`close`,
naming each step. ``inline=True`` audits in the calling process instead, for debugging: an
error is raised at once, and the caller's RNG states, thread count and grad mode are put
back after each step.
"""

from __future__ import annotations

import base64
import json
import os
import pickle
import subprocess
import sys
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, Literal

from flq_audit.errors import FlqAuditError, FlqAuditWarning, OptionError
from flq_audit.integrations._settings import AuditSettings, audit_step, error_from_records, step_error

OnError = Literal["raise", "warn"]


class AuditWorker:
    """Audits the steps given to :meth:`submit` into the settings' store, beside the caller.

    Parameters
    ----------
    settings : AuditSettings
        The folder, the store and the audit options.
    inline : bool
        Audit in this process, synchronously (errors raise at once).
    on_error : "raise" or "warn"
        What :meth:`close` does when steps failed.
    """

    def __init__(self, settings: AuditSettings, *, inline: bool = False,
                 on_error: OnError = "raise") -> None:
        if on_error not in ("raise", "warn"):
            raise OptionError(f"on_error must be 'raise' or 'warn'; got {on_error!r}")
        self.settings, self.inline, self.on_error = settings, inline, on_error
        self.submitted: list[int] = []
        self.audited: list[int] = []
        self.failures: list[dict[str, Any]] = []
        self._done = threading.Condition()
        self._proc: subprocess.Popen[bytes] | None = None
        self._reader: threading.Thread | None = None
        self._closed = False
        self._dead_warned = False
        self._reader_done = False

    # ------------------------------------------------------------------ public
    def submit(self, step: int) -> None:
        """Hand ``step`` over to be audited (the worker starts on the first step)."""
        if self._closed:
            raise OptionError(f"step {step}: the audit worker of {self.settings.store!r} is "
                              "closed", hint="Create a new Recorder or callback.")
        step = int(step)
        self.submitted.append(step)
        if self.inline:
            with preserved_state():
                audit_step(self.settings, step)
            self.audited.append(step)
            return
        proc = self._proc or self._start()
        assert proc.stdin is not None
        try:
            proc.stdin.write(f"{step}\n".encode())
            proc.stdin.flush()
        except OSError:  # the worker died: close() reports every step it did not audit
            self._warn_dead(step)

    def _warn_dead(self, step: int) -> None:
        if not self._dead_warned:
            self._dead_warned = True
            code = self._proc.poll() if self._proc is not None else None
            warnings.warn(f"the audit worker of {self.settings.store!r} exited (status {code}): "
                          f"step {step} and later steps are saved but not audited",
                          FlqAuditWarning, stacklevel=3)

    def wait(self) -> None:
        """Block until every submitted step has been audited or has failed."""
        with self._done:
            self._done.wait_for(lambda: self._settled() or self._exited())
        self._note_lost()

    def close(self) -> None:
        """Wait for the worker to finish every step, stop it, then raise (or warn about)
        the steps that failed."""
        if self._closed:
            return
        self._closed = True
        if self._proc is not None:
            assert self._proc.stdin is not None
            with suppress(OSError):  # it died already: the lost steps are reported below
                self._proc.stdin.close()  # end of input: the worker finishes and exits
            self._proc.wait()
            if self._reader is not None:
                self._reader.join()
            self._note_lost()
        self._report()

    def __enter__(self) -> AuditWorker:
        return self

    def __exit__(self, kind: object, value: object, tb: object) -> None:
        if kind is None:
            self.close()
        else:  # the caller failed: finish the audit, but let the caller's error through
            try:
                self.close()
            except FlqAuditError as err:
                warnings.warn(str(err), FlqAuditWarning, stacklevel=2)

    # ------------------------------------------------------------------ helpers
    def _start(self) -> subprocess.Popen[bytes]:
        env = dict(os.environ)
        root = str(Path(__file__).resolve().parents[2])  # the folder that holds flq_audit
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        proc = subprocess.Popen([sys.executable, "-m", "flq_audit.integrations._child"],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
        assert proc.stdin is not None
        proc.stdin.write(base64.b64encode(pickle.dumps(self.settings)) + b"\n")
        proc.stdin.flush()
        self._proc = proc
        self._reader = threading.Thread(target=self._read, args=(proc,), daemon=True,
                                        name="flq-audit-worker-replies")
        self._reader.start()
        return proc

    def _read(self, proc: subprocess.Popen[bytes]) -> None:
        """Collect the worker's replies (one JSON line per step) until it exits."""
        assert proc.stdout is not None
        for line in proc.stdout:
            reply = json.loads(line)
            with self._done:
                if "error" in reply:
                    self.failures.append(reply["error"])
                else:
                    self.audited.append(int(reply["step"]))
                self._done.notify_all()
        proc.wait()
        with self._done:
            self._reader_done = True
            self._done.notify_all()

    def _settled(self) -> bool:
        return len(self.audited) + len(self.failures) >= len(self.submitted)

    def _exited(self) -> bool:
        """The worker is gone and all its replies are read (under ``self._done``)."""
        return self._reader_done

    def _note_lost(self) -> None:
        """Steps the worker never answered (it died): failures that say so."""
        if self._proc is None or self._proc.poll() is None or self._settled():
            return
        answered = set(self.audited) | {int(r["step"]) for r in self.failures}
        code = self._proc.returncode
        for step in self.submitted:
            if step not in answered:
                self.failures.append({
                    "type": "FlqAuditError", "step": step, "folder": self.settings.folder,
                    "message": f"the audit worker exited (status {code}) before auditing "
                               "this step; its output above says why",
                    "path": None, "layer": None,
                    "hint": "Rerun flq-audit on the folder with the same options and --out "
                            "to finish the store."})

    def _report(self) -> None:
        if not self.failures:
            return
        err = error_from_records(self.failures, self.settings.store)
        if self.on_error == "raise":
            raise err
        warnings.warn(str(err), FlqAuditWarning, stacklevel=3)


@contextmanager
def preserved_state() -> Iterator[None]:
    """The caller's RNG states (python, numpy, torch CPU and CUDA), torch's thread count
    and grad mode, put back afterwards (an inline audit builds and replays models)."""
    import random

    import numpy as np
    import torch

    py_state, np_state = random.getstate(), np.random.get_state()
    threads, grad = torch.get_num_threads(), torch.is_grad_enabled()
    cuda = torch.cuda.is_initialized()
    cuda_states = torch.cuda.get_rng_state_all() if cuda else None
    cpu_state = torch.get_rng_state()
    try:
        yield
    finally:
        torch.set_rng_state(cpu_state)
        if cuda_states is not None:
            torch.cuda.set_rng_state_all(cuda_states)
        torch.set_num_threads(threads)
        torch.set_grad_enabled(grad)
        np.random.set_state(np_state)
        random.setstate(py_state)


def audit_one(settings: AuditSettings, step: int) -> dict[str, Any]:
    """The worker's reply for one step: audited, or the failure as a record."""
    try:
        audit_step(settings, step)
    except Exception as err:  # every failure goes back to the trainer, named by step
        return {"step": step, "error": step_error(step, settings.folder, err)}
    return {"step": step}


__all__ = ["AuditWorker", "OnError", "audit_one", "preserved_state"]
