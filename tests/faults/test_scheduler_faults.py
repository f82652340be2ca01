"""``--scheduler`` addresses that lead to no dask scheduler: nothing listens there, or a plain
HTTP server does. Both commands that take the option (the audit and ``metrics``) exit 7 within
dask's connect timeout, saying which it is, with no traceback and nothing written."""

from __future__ import annotations

import http.server
import socket
import threading

import pytest

from tests._helpers.cli import assert_says, cli_env, describe, invoke, run_many
from tests._helpers.runs import make_run

pytestmark = [pytest.mark.distributed, pytest.mark.slow]
pytest.importorskip("dask.distributed")

#: dask's connect timeout in the CLI runs below: short, so that the test is quick; the runs'
#: own time limit (run_many's) is far above it, so a hang fails the test instead of stalling.
CONNECT = "2s"


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("scheduler-faults")
    run = make_run(root / "run", steps=(0, 10))
    done = invoke("audit", run, "--out", root / "s.zarr", "-q")
    assert done.exit_code == 0, describe(done)
    return root / "s.zarr"


@pytest.fixture(scope="module")
def web_port():
    """A plain HTTP server on loopback (not dask), serving in a thread."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_an_http_server_is_not_a_dask_scheduler(store, web_port, tmp_path):
    import shutil

    run = store.parent / "run"
    stores = {name: shutil.copytree(store, tmp_path / f"{name}.zarr") for name in ("http", "tcp")}
    http_address, tcp_address = f"http://127.0.0.1:{web_port}", f"tcp://127.0.0.1:{web_port}"
    results = run_many({  # side by side: each store has one writer
        "metrics-http": ("metrics", stores["http"], "--scheduler", http_address),
        "metrics-tcp": ("metrics", stores["tcp"], "--scheduler", tcp_address),
        "audit-http": (run, "--out", tmp_path / "a.zarr", "--scheduler", http_address),
        "audit-tcp": (run, "--out", tmp_path / "b.zarr", "--scheduler", tcp_address),
    }, timeout=240, env=cli_env(DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT=CONNECT))
    for name, result in results.items():
        assert result.returncode == 7, f"{name}: {describe(result)}"
        address = http_address if name.endswith("http") else tcp_address
        assert_says(result.stderr, f"error: {address!r} is not a dask scheduler")
        assert "Traceback" not in result.stderr, name
    assert_says(results["metrics-tcp"].stderr, "did not answer dask's handshake within 2 s")
    assert not (tmp_path / "a.zarr").exists() and not (tmp_path / "b.zarr").exists()
    import xarray as xr

    for copy in stores.values():  # metrics wrote nothing
        assert "target_linearity" not in xr.open_zarr(copy)


def test_metrics_on_an_unreachable_scheduler_is_a_network_error(store):
    address = f"tcp://127.0.0.1:{_closed_port()}"
    result = invoke("metrics", store, "--scheduler", address)
    assert result.exit_code == 7, describe(result)
    assert_says(result.stderr, f"error: cannot reach the dask scheduler at {address!r}")
    assert "Traceback" not in result.stderr
