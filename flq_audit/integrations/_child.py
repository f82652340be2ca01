"""The audit worker process (``python -m flq_audit.integrations._child``).

Input, one line each: the pickled :class:`AuditSettings` (base64), then one step number a
line until end of input. Output: one JSON line per step on the original standard output;
everything else the audit prints goes to standard error.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import pickle
import signal
import sys

#: How much lower than the trainer's the worker's CPU priority is (``nice``): it changes
#: which process waits, never what is computed.
NICENESS = 10


def main() -> int:
    # Ctrl-C in the terminal reaches the whole process group: training stops, and the worker
    # finishes the steps it was handed (it exits at the end of its input; SIGTERM stops it)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with contextlib.suppress(OSError, AttributeError):  # no nice() on this platform
        os.nice(NICENESS)  # training keeps the CPU when both want it
    from flq_audit.integrations._worker import audit_one

    replies = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1)
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # stray prints cannot break the replies
    settings = pickle.loads(base64.b64decode(sys.stdin.buffer.readline()))
    for line in sys.stdin:
        if line.strip():
            replies.write(json.dumps(audit_one(settings, int(line))) + "\n")
    replies.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
