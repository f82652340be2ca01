"""Connect to a ``dask.distributed`` scheduler by address (``--scheduler``), in bounded time.

Both the audit (``--scheduler`` of ``flq-audit SOURCE``) and ``metrics --scheduler`` connect
here. Before the client starts, two probes bounded by dask's connect timeout
(``distributed.comm.timeouts.connect``, 30 s unless configured) tell the failures apart:
nothing listens at the address (exit 7, "cannot reach"), or something listens but does not
answer dask's handshake, such as a web server or a dashboard (exit 7, "not a dask
scheduler"; dask's own client would wait for that answer forever). A malformed address is a
usage error (exit 2).

It also holds the rule of ``--workers auto`` (:func:`auto_workers`) and the torch threads
each audit process of a local cluster runs (:func:`threads_per_worker`).
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

from flq_audit.errors import NetworkError, OptionError

if TYPE_CHECKING:
    from dask.distributed import Client

#: Schemes of web servers: a dask scheduler never speaks them (its dashboard does).
_WEB = ("http", "https")
#: Schemes whose address is ``HOST:PORT`` on TCP (the probes apply).
_TCP = ("tcp", "tls", "ws", "wss", *_WEB)
_HINT = "A scheduler's address is tcp://HOST:8786 (`dask scheduler` prints it)."

#: ``--workers auto`` gives each audit process at least this many steps: a worker starts
#: seconds after the audit does (it imports torch and rebuilds the model), so one that would
#: audit a single step rarely finishes it before the process that started it is done.
AUTO_MIN_STEPS_PER_WORKER = 2


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity mask, else ``os.cpu_count()``)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def auto_workers(cores: int, steps: int, device: str = "cpu") -> int:
    """How many audit processes ``--workers auto`` runs; 1 is the sequential audit.

    One per core, as long as each gets :data:`AUTO_MIN_STEPS_PER_WORKER` steps or more:
    ``min(cores, steps // 2)``, and 1 (sequential) when that is under 2 (one core, or fewer
    than 4 steps to audit). An audit on an accelerator (``device`` other than ``cpu``) is
    sequential: its processes would share the one device.
    """
    if device != "cpu":
        return 1
    return max(1, min(cores, steps // AUTO_MIN_STEPS_PER_WORKER))


def threads_per_worker(cores: int, workers: int, threads: int | None = None) -> int:
    """torch intra-op threads of each of ``workers`` audit processes on ``cores`` cores:
    ``threads`` (``--threads``) when given, else ``cores // workers`` (at least 1), so
    threads × workers never exceeds the cores."""
    if threads is not None:
        return threads
    return max(1, cores // max(1, workers))


def active_client() -> Client | None:
    """The ``dask.distributed`` client the caller has made current (``with Client(...)``, or
    the last one created), if any; never imports ``distributed`` itself."""
    if "distributed" not in sys.modules:
        return None
    from distributed import default_client

    try:
        return default_client()
    except ValueError:  # no client
        return None


def connect_timeout() -> float:
    """dask's connect timeout in seconds (``distributed.comm.timeouts.connect``)."""
    import dask
    from dask.utils import parse_timedelta

    return float(parse_timedelta(dask.config.get("distributed.comm.timeouts.connect"),
                                 default="seconds"))


def scheduler_client(address: str) -> Client:
    """A client of the scheduler at ``address``, or a :class:`NetworkError` (exit 7) that says
    why none could be made, within the connect timeout."""
    try:
        from dask.distributed import Client
    except ImportError as err:
        raise OptionError("--scheduler needs dask.distributed: "
                          "pip install 'flq-audit[distributed]'") from err
    timeout = connect_timeout()
    scheme, host, port = _parse(address)
    if port is not None:  # a HOST:PORT scheme (tcp, tls, ws, http ...)
        _require_listener(address, host, port, timeout)
        if scheme in _WEB:
            raise NetworkError(
                f"{address!r} is not a dask scheduler: a server listens there, but an "
                f"{scheme}:// address is a web server's (a dask dashboard's, for one)",
                hint=_HINT)
        _require_handshake(address, timeout)
    try:
        return Client(address, timeout=timeout)
    except (OSError, TimeoutError) as err:
        raise _unreachable(address, err) from err
    except ValueError as err:
        raise _malformed(address, err) from err


def _parse(address: str) -> tuple[str, str, int | None]:
    """``(scheme, host, port)``; ``port`` is None for schemes without one (``inproc`` ...)."""
    from distributed.comm.addressing import parse_address, parse_host_port

    try:
        scheme, location = parse_address(address)
        if scheme not in _TCP:
            return scheme, location, None
        host, port = parse_host_port(location)
    except ValueError as err:
        raise _malformed(address, err) from err
    if port is None:
        raise _malformed(address, ValueError("no port"))
    return scheme, host, int(port)


def _require_listener(address: str, host: str, port: int, timeout: float) -> None:
    """Something accepts TCP connections at ``host:port``, or :class:`NetworkError`."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except OSError as err:
        raise _unreachable(address, err) from err


def _require_handshake(address: str, timeout: float) -> None:
    """What listens at ``address`` answers dask's handshake within ``timeout``."""
    with ThreadPoolExecutor(1) as pool:  # its own event loop, whatever loop the caller runs
        answered = pool.submit(asyncio.run, _handshake(address, timeout)).result()
    if not answered:
        raise NetworkError(
            f"{address!r} is not a dask scheduler: something accepts connections there but "
            f"did not answer dask's handshake within {timeout:g} s (the connect timeout, "
            "distributed.comm.timeouts.connect)", hint=_HINT)


async def _handshake(address: str, timeout: float) -> bool:
    from distributed.comm import connect
    from distributed.security import Security

    args = Security().get_connection_args("client")
    try:
        comm = await asyncio.wait_for(connect(address, timeout=timeout, **args), timeout)
    except Exception:  # timed out, closed or garbled: not dask's answer
        return False
    await comm.close()
    return True


def _unreachable(address: str, err: BaseException) -> NetworkError:
    return NetworkError(
        f"cannot reach the dask scheduler at {address!r} ({err or type(err).__name__})",
        hint="Check the address (`dask scheduler` prints it), or that a firewall lets "
        "this machine reach it.")


def _malformed(address: str, err: BaseException) -> OptionError:
    return OptionError(f"--scheduler {address!r} is not a scheduler address ({err}); "
                       "expected e.g. tcp://HOST:8786")


__all__ = ["AUTO_MIN_STEPS_PER_WORKER", "auto_workers", "connect_timeout", "scheduler_client",
           "threads_per_worker", "usable_cores"]
