"""Measuring helpers of ``benchmarks/run.py``: one process's rusage, paired runs, the machine.

Every figure is taken from a fresh child process (``os.wait4``: its own user+sys CPU time
and peak RSS, not its children's running maximum); paired sides run alternately (A B, B A,
A B ...) so that a change of load on the shared machine hits both sides alike.
"""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence

Command = Sequence[object]


def measured(cmd: Command, env: dict[str, str] | None = None) -> dict[str, object]:
    """Run ``cmd`` in a fresh process: its wall s, CPU s (user+sys) and peak RSS MiB from
    its own rusage (``wait4``), and its stdout; raises with its stderr if it fails."""
    args = [str(part) for part in cmd]
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        start = time.perf_counter()
        proc = subprocess.Popen(args, env=env, stdout=out, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} exited {proc.returncode}:\n{err.read()[-2000:]}")
        return {"wall_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime,
                "peak_rss_mib": usage.ru_maxrss / 1024, "stdout": out.read()}


def rounded(value: float, digits: int = 5) -> float:
    """``value`` to ``digits`` significant digits (small differences keep their size)."""
    return float(f"{value:.{digits}g}")


def summary(values: Sequence[float]) -> dict[str, object]:
    """Median, min, max and the values themselves."""
    return {"median": rounded(statistics.median(values)), "min": rounded(min(values)),
            "max": rounded(max(values)), "values": [rounded(v) for v in values]}


def paired(sides: dict[str, Callable[[int], Command]], repeats: int,
           env: dict[str, str] | None = None) -> dict[str, list[dict[str, object]]]:
    """Run every side ``repeats`` times, the order rotated each round; the runs per side."""
    names = list(sides)
    runs: dict[str, list[dict[str, object]]] = {name: [] for name in names}
    for i in range(repeats):
        for name in names[i % len(names):] + names[:i % len(names)]:
            runs[name].append(measured(sides[name](i), env))
    return runs


def values(runs: list[dict[str, object]], key: str) -> list[float]:
    return [float(run[key]) for run in runs]  # type: ignore[arg-type]


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def machine() -> dict[str, object]:
    """CPU model, cores, RAM, and the versions of python, torch and numpy (read in a child,
    so that this process never imports torch)."""
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            model = next(line.split(":", 1)[1].strip() for line in handle
                         if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    versions = measured([sys.executable, "-c", "import numpy, torch, zarr; print(torch.__version__,"
                      " numpy.__version__, zarr.__version__)"])["stdout"]
    torch_v, numpy_v, zarr_v = str(versions).split()
    return {"cpu": model, "cores": os.cpu_count(), "ram_gib": round(ram, 1),
            "python": platform.python_version(), "torch": torch_v, "numpy": numpy_v,
            "zarr": zarr_v, "platform": platform.platform()}
