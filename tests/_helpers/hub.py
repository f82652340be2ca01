"""Loopback Hugging Face Hub servers for the Hub source tests.

* :func:`build_git_repo` writes a real (non-bare) git repository, one branch per checkpoint,
  in a single ``git fast-import`` call. Weight files are committed as real Git LFS pointer
  files and their bytes stored under ``.git/lfs/objects`` (no git-lfs binary needed), so the
  Hub tree API reports their LFS sha256.
* :class:`OlahServer` runs ``olah-cli`` (PyPI ``olah``) in offline mode over such repositories
  laid out as ``mirrors/models/<org>/<name>``: a real Hub-compatible server.
* :class:`StubHub` is a tiny stdlib server for the error paths olah cannot produce (a missing
  revision, a gated repo, transient 5xx): it answers only the endpoints it is told to.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import torch
from safetensors.torch import save as save_safetensors

from tests._helpers.requires import missing

LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
_GIT_ENV = {
    "GIT_AUTHOR_NAME": "flq", "GIT_AUTHOR_EMAIL": "flq@example.invalid",
    "GIT_COMMITTER_NAME": "flq", "GIT_COMMITTER_EMAIL": "flq@example.invalid",
    "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": os.devnull,
}


# ------------------------------------------------------------------ tiny weights
def tiny_state(seed: int, width: int = 4) -> dict[str, torch.Tensor]:
    """A two-layer state dict whose values depend on ``seed``."""
    gen = torch.Generator().manual_seed(seed)
    return {
        "layers.0.weight": torch.randn(width, width, generator=gen),
        "layers.0.bias": torch.randn(width, generator=gen),
        "layers.1.weight": torch.randn(2, width, generator=gen),
    }


def safetensors_bytes(state: Mapping[str, torch.Tensor]) -> bytes:
    return save_safetensors(dict(state))


def sharded(state: Mapping[str, torch.Tensor], n: int) -> dict[str, bytes]:
    """``model-0000k-of-0000n.safetensors`` shards and their ``model.safetensors.index.json``."""
    keys = sorted(state)
    files: dict[str, bytes] = {}
    weight_map: dict[str, str] = {}
    total = 0
    for k in range(n):
        name = f"model-{k + 1:05d}-of-{n:05d}.safetensors"
        part = {key: state[key] for key in keys[k::n]}
        files[name] = safetensors_bytes(part)
        weight_map.update({key: name for key in part})
        total += sum(t.numel() * t.element_size() for t in part.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    files["model.safetensors.index.json"] = json.dumps(index, indent=2).encode()
    return files


def lfs_pointer(data: bytes) -> tuple[bytes, str]:
    """The Git LFS pointer text for ``data`` and its sha256."""
    digest = hashlib.sha256(data).hexdigest()
    text = f"version https://git-lfs.github.com/spec/v1\noid sha256:{digest}\nsize {len(data)}\n"
    return text.encode(), digest


# ------------------------------------------------------------------ git repositories
def build_git_repo(
    path: Path, branches: Mapping[str, Mapping[str, bytes]], *, lfs_suffixes=LFS_SUFFIXES,
) -> dict[str, str]:
    """Create a git repository at ``path`` with one orphan commit per branch.

    ``branches`` maps a branch name to ``{repo path: bytes}``. Files ending in
    ``lfs_suffixes`` are committed as LFS pointers. Returns ``{branch: commit sha}`` as
    ``git rev-parse`` reports it.
    """
    path.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **_GIT_ENV}
    subprocess.run(["git", "init", "-q", "-b", "main", str(path)], check=True, env=env)
    stream = io.BytesIO()
    when = 1_700_000_000
    for n, (branch, files) in enumerate(branches.items()):
        stream.write(f"commit refs/heads/{branch}\n".encode())
        stream.write(f"committer flq <flq@example.invalid> {when + n} +0000\n".encode())
        message = f"checkpoint {branch}\n".encode()
        stream.write(b"data %d\n%s\n" % (len(message), message))
        content = dict(files)
        if any(name.endswith(lfs_suffixes) for name in content):
            content.setdefault(".gitattributes", "".join(
                f"*{s} filter=lfs diff=lfs merge=lfs -text\n" for s in lfs_suffixes).encode())
        for name, data in sorted(content.items()):
            if name.endswith(lfs_suffixes):
                data = _store_lfs_object(path, data)
            stream.write(f"M 100644 inline {name}\n".encode())
            stream.write(b"data %d\n%s\n" % (len(data), data))
    subprocess.run(["git", "fast-import", "--quiet"], cwd=path, input=stream.getvalue(), check=True, env=env)
    if "main" in branches:
        subprocess.run(["git", "checkout", "-q", "-f", "main"], cwd=path, check=True, env=env)
    return {b: rev_parse(path, b) for b in branches}


def rev_parse(path: Path, ref: str) -> str:
    out = subprocess.run(["git", "rev-parse", ref], cwd=path, capture_output=True, text=True, check=True)
    return out.stdout.strip()


def _store_lfs_object(repo: Path, data: bytes) -> bytes:
    """Write the LFS object for ``data`` and return the pointer to commit instead."""
    pointer, digest = lfs_pointer(data)
    target = repo / ".git" / "lfs" / "objects" / digest[:2] / digest[2:4] / digest
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data)
    return pointer


# ------------------------------------------------------------------ servers
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until_answers(url: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except urllib.error.HTTPError:
            return  # any HTTP answer means the server is up
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def olah_cli() -> str | None:
    beside = Path(sys.executable).with_name("olah-cli")
    return str(beside) if beside.is_file() else shutil.which("olah-cli")


#: Why a test that needs the loopback Hub server is skipped.
OLAH_MISSING = "olah is not installed (pip install -e '.[test]')"


@contextlib.contextmanager
def olah_hub(workdir: Path, repos: Mapping[str, Mapping[str, Mapping[str, bytes]]],
             ) -> Iterator[tuple[str, dict[str, dict[str, str]], OlahServer]]:
    """An olah server on loopback over ``repos`` (``{repo: {branch: {path: bytes}}}``): yields
    ``(endpoint, {repo: {branch: commit}}, server)`` and stops the server after. The test is
    skipped when olah is not installed."""
    if olah_cli() is None:
        missing(OLAH_MISSING)
    server = OlahServer(workdir)
    shas = {repo: build_git_repo(server.repo_path(repo), branches)
            for repo, branches in repos.items()}
    endpoint = server.start()
    try:
        yield endpoint, shas, server
    finally:
        server.stop()


class OlahServer:
    """``olah-cli -c configs.toml`` (offline) serving ``<workdir>/mirrors`` on loopback."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.mirrors = workdir / "mirrors"
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._proc: subprocess.Popen | None = None

    def repo_path(self, repo_id: str) -> Path:
        return self.mirrors / "models" / repo_id

    def start(self, timeout: float = 30.0) -> str:
        exe = olah_cli()
        if exe is None:
            raise FileNotFoundError("olah-cli is not installed (pip install olah)")
        netloc = f"127.0.0.1:{self.port}"
        (self.workdir / "configs.toml").write_text(
            "[basic]\n"
            f'host = "127.0.0.1"\nport = {self.port}\n'
            'repos-path = "./repos"\nmirror-scheme = "http"\n'
            f'mirror-netloc = "{netloc}"\nmirror-lfs-netloc = "{netloc}"\n'
            'mirrors-path = ["./mirrors"]\n'
            "[accessibility]\noffline = true\n"
        )
        env = {**os.environ, "OLAH_LOG_PATH": str(self.workdir / "logs")}
        log = (self.workdir / "olah.out").open("wb")
        self._proc = subprocess.Popen(
            [exe, "-c", "configs.toml"], cwd=self.workdir, env=env, stdout=log, stderr=subprocess.STDOUT,
        )
        try:
            wait_until_answers(f"{self.endpoint}/api/models/none/none/refs", timeout)
        except OSError:
            self.stop()
            raise RuntimeError(f"olah did not start:\n{self.log_tail()}") from None
        return self.endpoint

    def log_tail(self, n: int = 4000) -> str:
        path = self.workdir / "olah.out"
        return path.read_text(errors="replace")[-n:] if path.exists() else ""

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None


#: A stub route: ``(status, headers, body)`` or a callable returning one.
Route = tuple[int, Mapping[str, str], bytes] | Callable[[], tuple[int, Mapping[str, str], bytes]]


class StubHub:
    """A stdlib HTTP server that answers fixed routes (``"GET /path"`` → response); else 404.

    ``hits`` counts requests per route key, so tests can check retries.
    """

    def __init__(self, routes: Mapping[str, Route]) -> None:
        self.routes = dict(routes)
        self.hits: dict[str, int] = {}
        stub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _answer(self, with_body: bool) -> None:
                key = f"{'GET' if with_body else 'HEAD'} {self.path.split('?')[0]}"
                stub.hits[key] = stub.hits.get(key, 0) + 1
                route = stub.routes.get(key)
                if route is None:
                    route = (404, {"X-Error-Code": "RepoNotFound"}, b'{"error": "not found"}')
                status, headers, body = route() if callable(route) else route
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if with_body:
                    self.wfile.write(body)

            def do_GET(self) -> None:
                self._answer(True)

            def do_HEAD(self) -> None:
                self._answer(False)

            def log_message(self, *args) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)

    def __enter__(self) -> StubHub:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()


def json_route(payload, status: int = 200, headers: Mapping[str, str] | None = None) -> Route:
    return status, {"Content-Type": "application/json", **(headers or {})}, json.dumps(payload).encode()
