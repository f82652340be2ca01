"""Talking to the Hub and its local cache: error translation, retries, offline listing.

``huggingface_hub`` is imported lazily (inside functions), because it reads ``HF_HUB_OFFLINE``,
``HF_ENDPOINT`` and ``HF_HUB_CACHE`` once, at import time: the CLI must be able to set them
(``--offline``) before the first import.

Retries: ``hf_hub_download`` already retries transient failures itself (HEAD with backoff on
429/5xx/timeouts when no cached copy exists, and resumed GETs), so downloads are not wrapped
again. The listing calls (``list_repo_refs``, ``model_info``, ``list_repo_tree``) go through a
plain session without retries; :func:`with_retries` covers those.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypedDict, TypeVar

from flq_audit.errors import CheckpointNotFoundError, FlqAuditError, NetworkError, SourceError
from flq_audit.sources._hub_files import RemoteFile

log = logging.getLogger("flq_audit.sources.hub")
T = TypeVar("T")

TRANSIENT_STATUS = frozenset({408, 429, 500, 502, 503, 504})
_HEX40 = re.compile(r"[0-9a-f]{40}")
_HEX64 = re.compile(r"[0-9a-f]{64}")
TOKEN_HINT = (
    "For a private or gated repository, accept its terms on the Hub and export HF_TOKEN "
    "(a read token); flq-audit reads it from the environment and never stores or prints it."
)


# ------------------------------------------------------------------ errors
def hub_error(
    cls: type[FlqAuditError], message: str, *, repo_id: str, revision: str | None = None,
    step: int | None = None, hint: str | None = None,
) -> FlqAuditError:
    """An flq-audit error carrying ``repo_id`` and ``revision`` attributes."""
    err = cls(message, path=f"hf://{repo_id}", step=step, hint=hint)
    err.repo_id = repo_id  # type: ignore[attr-defined]  # set on this error only
    err.revision = revision  # type: ignore[attr-defined]  # set on this error only
    return err


def _status(err: BaseException) -> int | None:
    response = getattr(err, "response", None)
    return getattr(response, "status_code", None)


def _transport_errors() -> tuple[type[BaseException], ...]:
    """Network-level exception types of whichever HTTP client huggingface_hub uses."""
    found: list[type[BaseException]] = []
    for module, names in (
        ("httpx2", ("TimeoutException", "NetworkError", "RemoteProtocolError")),
        ("httpx", ("TimeoutException", "NetworkError", "RemoteProtocolError")),
        ("requests", ("ConnectionError", "Timeout")),
    ):
        try:
            mod = __import__(module)
        except ImportError:
            continue
        found.extend(getattr(mod, name) for name in names if hasattr(mod, name))
    return tuple(found)


def is_transient(err: BaseException) -> bool:
    """A failure worth retrying: a 408/429/5xx answer, or a timeout / dropped connection."""
    from huggingface_hub.errors import HfHubHTTPError

    if isinstance(err, HfHubHTTPError):
        return _status(err) in TRANSIENT_STATUS
    return isinstance(err, _transport_errors())


def with_retries(call: Callable[[], T], delays: tuple[float, ...], what: str) -> T:
    """Run ``call``; on a transient failure wait ``delays[i]`` and try again, then give up."""
    for attempt in range(len(delays) + 1):
        try:
            return call()
        except Exception as err:
            if attempt == len(delays) or not is_transient(err):
                raise
            log.warning("%s failed (%s); retry %d/%d in %.1fs", what, _short(err), attempt + 1,
                        len(delays), delays[attempt])
            time.sleep(delays[attempt])
    raise AssertionError("unreachable")  # pragma: no cover


@contextmanager
def translated(
    repo_id: str, *, revision: str | None = None, step: int | None = None, repo_known: bool = False,
    endpoint: str | None = None, what: str = "request", offline: bool = False, entry_is_repo: bool = False,
) -> Iterator[None]:
    """Turn huggingface_hub / HTTP exceptions raised inside into flq-audit errors, once.

    ``repo_known``: the repository was listed already, so a "repository not found" answer
    (which olah and a 401 both give for a missing revision) means the revision is missing.
    ``entry_is_repo``: a 404 "entry not found" means the repository is missing (olah's answer
    to ``/refs`` of an unknown repo).
    """
    try:
        yield
    except FlqAuditError:
        raise
    except Exception as err:
        mapped = _translate(err, repo_id, revision, step, repo_known, endpoint, what, offline, entry_is_repo)
        if mapped is None:
            raise
        raise mapped from None


class _Where(TypedDict):
    """Where a Hub error happened: the keyword arguments of :func:`hub_error` besides the hint."""

    repo_id: str
    revision: str | None
    step: int | None


def _translate(
    err: Exception, repo_id: str, revision: str | None, step: int | None, repo_known: bool,
    endpoint: str | None, what: str, offline: bool, entry_is_repo: bool,
) -> FlqAuditError | None:
    from huggingface_hub import errors as hf

    where = f"{repo_id}@{revision}" if revision else repo_id
    ctx: _Where = {"repo_id": repo_id, "revision": revision, "step": step}
    status = _status(err)
    if isinstance(err, hf.GatedRepoError):
        return hub_error(SourceError, f"repository {repo_id!r} is gated: access was refused ({status})",
                         hint=TOKEN_HINT, **ctx)
    if isinstance(err, hf.LocalEntryNotFoundError):
        if offline:
            return hub_error(CheckpointNotFoundError,
                             f"{what} of {where} is not in the local Hugging Face cache (offline mode)",
                             hint="Run once online to fill the cache, or drop --offline.", **ctx)
        return _unreachable(err.__cause__ or err, where, endpoint, ctx)
    if isinstance(err, hf.RevisionNotFoundError) or (
        repo_known and revision is not None and isinstance(err, hf.RepositoryNotFoundError)
    ):
        return hub_error(CheckpointNotFoundError, f"revision {revision!r} not found in {repo_id!r}",
                         hint="Check the revision name against the repository's branches.", **ctx)
    entry_missing = isinstance(err, hf.EntryNotFoundError)
    if isinstance(err, hf.RepositoryNotFoundError) or (entry_is_repo and entry_missing):
        note = " (the Hub answered 401: it may also be private or gated)" if status == 401 else ""
        return hub_error(CheckpointNotFoundError,
                         f"repository {repo_id!r} not found on the Hub{note}, and no local folder "
                         f"{repo_id!r} exists",
                         hint=f"Check the repo id (ORG/NAME) and the endpoint. {TOKEN_HINT}", **ctx)
    if entry_missing:
        return hub_error(CheckpointNotFoundError, f"{what}: not found in {where}", **ctx)
    if isinstance(err, hf.OfflineModeIsEnabled):
        return hub_error(SourceError, f"{what} of {where} needs the Hub, but offline mode is on",
                         hint="Unset HF_HUB_OFFLINE, or fill the cache first.", **ctx)
    if is_transient(err):
        return _unreachable(err, where, endpoint, ctx)
    if isinstance(err, hf.HfHubHTTPError):
        if status in (401, 403):
            return hub_error(SourceError, f"access to {where} was refused ({status})", hint=TOKEN_HINT, **ctx)
        return hub_error(SourceError, f"{what} of {where} failed: {_short(err)}", **ctx)
    return None


def _unreachable(err: BaseException, where: str, endpoint: str | None, ctx: _Where) -> FlqAuditError:
    at = f" at {endpoint}" if endpoint else ""
    return hub_error(
        NetworkError, f"the Hub{at} did not answer for {where} after retries: {_short(err)}",
        hint="A network or server problem; rerun later (finished steps are kept), "
             "or use --offline with a filled cache.", **ctx,
    )


def _short(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text[:200]}"


# ------------------------------------------------------------------ the local cache
def default_cache_dir() -> Path:
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def repo_cache_dir(cache_dir: Path, repo_id: str) -> Path:
    return cache_dir / ("models--" + repo_id.replace("/", "--"))


def cached_branches(cache_dir: Path, repo_id: str) -> list[tuple[str, str]]:
    """``(ref name, commit)`` for every ``refs/`` entry of a cached repo (offline listing)."""
    refs = repo_cache_dir(cache_dir, repo_id) / "refs"
    if not refs.is_dir():
        return []
    out = []
    for path in sorted(p for p in refs.rglob("*") if p.is_file()):
        commit = path.read_text().strip()
        if _HEX40.fullmatch(commit):
            out.append((path.relative_to(refs).as_posix(), commit))
    return out


def remember_ref(cache_dir: Path, repo_id: str, revision: str, commit: str) -> None:
    """Write ``refs/<revision>`` → ``commit`` (files fetched by commit get no ref otherwise),
    so that an offline run can list the revision later. Atomic, like huggingface_hub's own."""
    if revision == commit or not _HEX40.fullmatch(commit):
        return
    ref = repo_cache_dir(cache_dir, repo_id) / "refs" / revision
    if ref.is_file() and ref.read_text().strip() == commit:
        return
    ref.parent.mkdir(parents=True, exist_ok=True)
    tmp = ref.with_name(f"{ref.name}.{os.getpid()}.tmp")
    tmp.write_text(commit)
    os.replace(tmp, ref)


def cached_commit(cache_dir: Path, repo_id: str, revision: str) -> str | None:
    if _HEX40.fullmatch(revision):
        snapshot = repo_cache_dir(cache_dir, repo_id) / "snapshots" / revision
        return revision if snapshot.is_dir() else None
    return dict(cached_branches(cache_dir, repo_id)).get(revision)


def cached_files(cache_dir: Path, repo_id: str, commit: str) -> list[RemoteFile]:
    """The files of a cached snapshot; a symlink into ``blobs/`` gives the sha256 or blob id."""
    root = repo_cache_dir(cache_dir, repo_id) / "snapshots" / commit
    files = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        target = path.resolve()
        name = target.name if target.parent.name == "blobs" else ""
        files.append(RemoteFile(
            path=path.relative_to(root).as_posix(), size=target.stat().st_size,
            sha256=name if _HEX64.fullmatch(name) else None,
            blob_id=name if _HEX40.fullmatch(name) else None,
        ))
    return files


def env_offline() -> bool:
    from huggingface_hub import constants

    from_env = os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "TRUE", "YES")
    return bool(constants.HF_HUB_OFFLINE) or from_env
