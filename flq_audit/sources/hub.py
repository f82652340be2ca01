"""Checkpoints on the Hugging Face Hub (or any Hub-compatible server).

Three layouts are discovered:

* **branches** (default): ``list_repo_refs`` and the revision parsers of
  :mod:`flq_audit.sources.revisions` (Pythia ``stepN``, OLMo ``stepN-tokensNB``, OLMo 2
  ``stageS[-ingredientI]-stepN-tokensNB``, Amber ``ckpt_NNN``, CRFM ``checkpoint-N``,
  ``step_N``), or a custom ``revision_pattern``;
* **subfolders** of one revision (``checkpoint-N/`` as the Trainer pushes them): used when
  ``subfolders=True``, or automatically when no branch matches;
* **one repo per step** through ``repo_template`` (``"google/multiberts-seed_0-step_{step}k"``)
  and ``template_steps``; the step is the number written into the name.

Every ref is pinned to its commit SHA and carries the repo paths of its weight files, their
total size and (when the server reports it) their LFS sha256, all from file listings: listing
downloads no weights (only a shard index, when there is one). ``fetch`` downloads one ref's
weights plus its config and tokenizer files into the HF cache (reused across runs);
``release`` evicts it again when ``cache="drop"``. With ``offline=True`` (or
``HF_HUB_OFFLINE=1``) everything is read from the cache: branches from ``refs/``, files from
``snapshots/``.

The token is never an argument: huggingface_hub reads ``HF_TOKEN`` from the environment (or
its login file) per request; flq-audit neither stores nor prints it.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, ClassVar, Literal

from flq_audit.errors import CheckpointNotFoundError, FlqAuditWarning, IntegrityError
from flq_audit.sources import _hub_io as hubio
from flq_audit.sources._base import CheckpointRef, CheckpointSource
from flq_audit.sources._hub_files import (
    RemoteFile,
    WeightChoice,
    choose_weights,
    file_hashes,
    find_duplicates,
    resolve_index,
)
from flq_audit.sources._hub_guard import DownloadLedger, announce, cache_entries
from flq_audit.sources._hub_progress import DownloadListener, StepDownloads, byte_counter
from flq_audit.sources.revisions import RevisionInfo, assign_steps, compile_revision_pattern, parse_revision

_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.{}:-]+")
_PREFIX = "hf://"


class HubSource(CheckpointSource):
    """Checkpoints of one Hub repository (or a family of per-step repositories)."""

    name: ClassVar[str] = "hub"
    supports_release = supports_duplicates = supports_header_shapes = supports_config_dir = True
    #: Waits (seconds) between attempts of a listing call that failed transiently.
    retry_delays: ClassVar[tuple[float, ...]] = (1.0, 2.0, 4.0)
    #: Parallel listing requests (one tree listing per revision).
    max_workers: ClassVar[int] = 8

    def __init__(
        self,
        repo_id: str,
        *,
        api: Any = None,
        revision_pattern: str | re.Pattern[str] | None = None,
        subfolders: bool | None = None,
        repo_template: str | None = None,
        template_steps: Sequence[int] | None = None,
        cache: Literal["keep", "drop"] = "keep",
        revision: str = "main",
        cache_dir: str | Path | None = None,
        offline: bool | None = None,
    ) -> None:
        spec = repo_id[len(_PREFIX):] if repo_id.startswith(_PREFIX) else repo_id
        if repo_template is None and "{step" in spec:
            repo_template = spec
        if cache not in ("keep", "drop"):
            raise ValueError(f"cache must be 'keep' or 'drop', got {cache!r}")
        if repo_template is not None:
            if "{step" not in repo_template:
                raise ValueError(f"repo template {repo_template!r} has no {{step}} field")
            if not template_steps:
                raise ValueError(
                    f"repo template {repo_template!r} needs the list of steps to fill in (template_steps)"
                )
        self.repo_id = spec
        self.repo_template = repo_template
        self.template_steps = sorted({int(s) for s in template_steps or ()})
        self.pattern = compile_revision_pattern(revision_pattern) if revision_pattern else None
        self.subfolders = subfolders
        self.cache = cache
        self.revision = revision
        self._api = api
        self._cache_dir = Path(cache_dir).expanduser() if cache_dir is not None else None
        self._offline = offline
        self._ledger = DownloadLedger()
        self._downloads = StepDownloads()

    # ------------------------------------------------------------------ protocol
    @classmethod
    def guess_can_open(cls, spec: str) -> bool:
        """``ORG/NAME`` or ``hf://ORG/NAME`` that is not an existing local path."""
        if spec.startswith(_PREFIX):
            return bool(_REPO_ID.fullmatch(spec[len(_PREFIX):]))
        return bool(_REPO_ID.fullmatch(spec)) and not Path(spec).expanduser().exists()

    def describe(self) -> str:
        return _PREFIX + (self.repo_template or self.repo_id)

    @property
    def api(self) -> Any:
        if self._api is None:
            from huggingface_hub import HfApi

            self._api = HfApi()
        return self._api

    @property
    def endpoint(self) -> str:
        return self.api.endpoint

    @property
    def cache_dir(self) -> Path:
        return self._cache_dir if self._cache_dir is not None else hubio.default_cache_dir()

    @property
    def offline(self) -> bool:
        return hubio.env_offline() if self._offline is None else self._offline

    def list_refs(self) -> list[CheckpointRef]:
        """All checkpoints, sorted by step, pinned to commits, with file metadata."""
        announce(self.describe(), self.endpoint, offline=self.offline)
        if self.repo_template is not None:
            refs = self._list_template()
        elif self.subfolders:
            refs = self._list_subfolders(self.repo_id, self.revision)
        else:
            refs = self._list_branches()
        return sorted(refs, key=lambda r: r.step)

    def report_downloads(self, listener: DownloadListener | None) -> None:
        """Call ``listener(step, bytes done, bytes expected)`` as a step's files download."""
        self._downloads.listener = listener

    def fetch(self, ref: CheckpointRef) -> list[Path]:
        """Download (or find in the cache) the ref's weights and its config/tokenizer files."""
        self._downloads.begin(ref.step, ref.size_bytes)
        repo_dir = hubio.repo_cache_dir(self.cache_dir, ref.location)
        before = cache_entries(repo_dir) if self.cache == "drop" else set()
        paths = [self._download(ref.location, f, ref.commit, step=ref.step) for f in ref.files]
        for aux in ref.aux_files:
            try:
                self._download(ref.location, aux, ref.commit, step=ref.step)
            except CheckpointNotFoundError:
                if not self.offline:
                    raise
        _check_blobs(ref, paths)
        if not self.offline and ref.revision and ref.commit:
            hubio.remember_ref(self.cache_dir, ref.location, ref.revision, ref.commit)
        if self.cache == "drop":
            self._ledger.record(ref.step, before, cache_entries(repo_dir))
        return paths

    def config_dir(self, ref: CheckpointRef) -> Path | None:
        """Download only the ref's config/tokenizer files; their folder (None if it has none)."""
        for name in ref.aux_files:
            with contextlib.suppress(CheckpointNotFoundError):
                self._download(ref.location, name, ref.commit, step=ref.step)
        folder = self.snapshot_dir(ref)
        return folder if (folder / "config.json").is_file() else None

    def tensor_shapes(self, ref: CheckpointRef) -> dict[str, tuple[int, ...]]:
        """Tensor names and shapes from safetensors headers (ranged reads, no weights)."""
        from flq_audit.weights import tensor_shapes

        root_files = all("/" not in f and f.endswith(".safetensors") for f in ref.files)
        if self.offline or not root_files:
            return tensor_shapes(self.fetch(ref), step=ref.step)
        with hubio.translated(ref.location, revision=ref.commit, step=ref.step, repo_known=True,
                              endpoint=self.endpoint, what="safetensors headers"):
            meta = self.api.get_safetensors_metadata(ref.location, revision=ref.commit)
        return {name: tuple(info.shape) for file in meta.files_metadata.values()
                for name, info in file.tensors.items()}

    def snapshot_dir(self, ref: CheckpointRef) -> Path:
        """The local folder holding the ref's files (``config.json`` etc.) after :meth:`fetch`."""
        root = hubio.repo_cache_dir(self.cache_dir, ref.location) / "snapshots" / str(ref.commit)
        return root / ref.subfolder if ref.subfolder else root

    def release(self, ref: CheckpointRef) -> bool:
        """With ``cache="drop"``, delete what fetching the ref downloaded (never older files)."""
        if self.cache != "drop":
            return False
        return self._ledger.release(ref.step, hubio.repo_cache_dir(self.cache_dir, ref.location))

    def duplicates(self, refs: Sequence[CheckpointRef]) -> dict[int, int]:
        """``{step: earlier step}`` for refs whose weight files have identical hashes."""
        return find_duplicates(refs)

    # ------------------------------------------------------------------ discovery
    def _list_branches(self) -> list[CheckpointRef]:
        branches = self._branches(self.repo_id)
        infos = [(parse_revision(name, self.pattern), commit) for name, commit in branches]
        matched = [(info, commit) for info, commit in infos if info is not None]
        if not matched:
            if self.subfolders is None:
                refs = self._list_subfolders(self.repo_id, self.revision, quiet=True)
                if refs:
                    return refs
            names = [name for name, _ in branches]
            shown = ", ".join(names[:15]) + (f", … ({len(names)} in all)" if len(names) > 15 else "")
            raise hubio.hub_error(
                CheckpointNotFoundError,
                f"no branch of {self.repo_id!r} names a checkpoint"
                + (f" matching {self.pattern.pattern!r}" if self.pattern else "")
                + f"; branches: {shown or 'none'}",
                repo_id=self.repo_id,
                hint="Pass --revision-pattern with a (?P<step>\\d+) group, or --subfolders for "
                     "checkpoint-N/ folders, or a repo template for one repo per step.",
            )
        steps = assign_steps([info for info, _ in matched])
        jobs = [
            (self.repo_id, info.name, commit, step, info)
            for (info, commit), step in zip(matched, steps, strict=True)
        ]
        return [ref for ref in self._map(self._branch_ref, jobs) if ref is not None]

    def _branch_ref(self, repo: str, name: str, commit: str, step: int, info: RevisionInfo):
        files = self._tree(repo, commit, revision=name, step=step)
        return self._make_ref(repo, name, commit, step, "", files, info.extra(), label=name)

    def _list_subfolders(self, repo: str, revision: str, quiet: bool = False) -> list[CheckpointRef]:
        try:
            commit = self._resolve(repo, revision)
        except CheckpointNotFoundError:
            if quiet:
                return []
            raise
        files = self._tree(repo, commit, revision=revision)
        folders: dict[str, RevisionInfo] = {}
        for folder in sorted({f.path.rsplit("/", 1)[0] for f in files if "/" in f.path}):
            info = parse_revision(folder.rsplit("/", 1)[-1], self.pattern)
            if info is not None:
                folders[folder] = info
        if not folders:
            if quiet:
                return []
            raise hubio.hub_error(
                CheckpointNotFoundError,
                f"revision {revision!r} of {repo!r} has no checkpoint-N/ folders",
                repo_id=repo, revision=revision,
            )
        steps = assign_steps(list(folders.values()))
        refs = []
        for (folder, info), step in zip(folders.items(), steps, strict=True):
            ref = self._make_ref(repo, revision, commit, step, folder, files, info.extra(),
                                 label=folder + "/")
            if ref is not None:
                refs.append(ref)
        return refs

    def _list_template(self) -> list[CheckpointRef]:
        assert self.repo_template is not None
        jobs = [(self.repo_template.format(step=step), step) for step in self.template_steps]
        return [ref for ref in self._map(self._template_ref, jobs) if ref is not None]

    def _template_ref(self, repo: str, step: int) -> CheckpointRef | None:
        try:
            commit = self._resolve(repo, self.revision, step=step)
        except CheckpointNotFoundError as err:
            err.message = f"step {step}: {err.message}"
            err.step = step
            raise
        files = self._tree(repo, commit, revision=self.revision, step=step)
        extra = {"family": "template", "raw_step": str(step)}
        return self._make_ref(repo, self.revision, commit, step, "", files, extra, label=repo)

    def _make_ref(
        self, repo: str, revision: str, commit: str, step: int, folder: str,
        files: list[RemoteFile], extra: dict[str, str], *, label: str,
    ) -> CheckpointRef | None:
        choice = choose_weights(files, folder)
        if choice is None:
            import warnings

            warnings.warn(
                f"{repo}@{revision} {folder + '/' if folder else ''}holds no weight files "
                "(*.safetensors, pytorch_model*.bin); skipped", FlqAuditWarning, stacklevel=2,
            )
            return None
        if choice.index is not None:
            choice = self._resolve_index(repo, commit, choice, files, step=step)
        by_path = {f.path: f for f in files}
        return CheckpointRef(
            step=step, label=label, location=repo, files=choice.weights, fmt=choice.fmt,
            revision=revision, commit=commit,
            size_bytes=sum(by_path[w].size for w in choice.weights), extra=extra,
            aux_files=tuple(choice.aux), subfolder=folder, **file_hashes(choice.weights, by_path),
        )

    def _resolve_index(
        self, repo: str, commit: str, choice: WeightChoice, files: list[RemoteFile], step: int,
    ) -> WeightChoice:
        assert choice.index is not None
        path = self._download(repo, choice.index, commit, step=step)
        return resolve_index(choice, path.read_text(), files)

    # ------------------------------------------------------------------ Hub or cache calls
    def _branches(self, repo: str) -> list[tuple[str, str]]:
        if self.offline:
            found = hubio.cached_branches(self.cache_dir, repo)
            if not found:
                raise hubio.hub_error(
                    CheckpointNotFoundError,
                    f"repository {repo!r} has no revisions in the local cache {str(self.cache_dir)!r}"
                    " (offline mode)", repo_id=repo, hint="Run once online to fill the cache.",
                )
            return found
        # olah answers /refs of a missing repo with 404 EntryNotFound: that means "no repo".
        with hubio.translated(repo, endpoint=self.endpoint, what="listing branches", entry_is_repo=True):
            refs = hubio.with_retries(lambda: self.api.list_repo_refs(repo), self.retry_delays,
                                      f"list_repo_refs({repo})")
        return [(b.name, b.target_commit) for b in refs.branches]

    def _resolve(self, repo: str, revision: str, step: int | None = None) -> str:
        if self.offline:
            commit = hubio.cached_commit(self.cache_dir, repo, revision)
            if commit is None:
                raise hubio.hub_error(
                    CheckpointNotFoundError,
                    f"revision {revision!r} of {repo!r} is not in the local cache (offline mode)",
                    repo_id=repo, revision=revision, step=step, hint="Run once online to fill the cache.",
                )
            return commit
        with hubio.translated(repo, revision=revision, step=step, endpoint=self.endpoint,
                              what="resolving the revision"):
            info = hubio.with_retries(lambda: self.api.model_info(repo, revision=revision),
                                      self.retry_delays, f"model_info({repo}@{revision})")
        return info.sha

    def _tree(self, repo: str, commit: str, *, revision: str | None = None, step: int | None = None):
        if self.offline:
            return hubio.cached_files(self.cache_dir, repo, commit)

        def listing() -> list[RemoteFile]:
            out = []
            for entry in self.api.list_repo_tree(repo, revision=commit, recursive=True):
                if not hasattr(entry, "size"):
                    continue  # a folder
                lfs = getattr(entry, "lfs", None)
                sha = getattr(lfs, "sha256", None) if lfs is not None else None
                out.append(RemoteFile(entry.path, int(entry.size), sha, getattr(entry, "blob_id", None)))
            return out

        with hubio.translated(repo, revision=revision or commit, step=step, repo_known=True,
                              endpoint=self.endpoint, what="listing files"):
            return hubio.with_retries(listing, self.retry_delays, f"list_repo_tree({repo}@{commit[:10]})")

    def _download(self, repo: str, filename: str, commit: str | None, *, step: int | None = None) -> Path:
        from huggingface_hub import hf_hub_download

        # a counter class per call: one kept by the source holds a lock that dask cannot pickle
        kwargs: dict[str, Any] = {"revision": commit, "cache_dir": self.cache_dir,
                                  "tqdm_class": byte_counter(self._downloads.add)}
        if self.offline:
            kwargs["local_files_only"] = True
        else:
            kwargs["endpoint"] = self.endpoint
        endpoint = None if self.offline else self.endpoint
        with hubio.translated(repo, revision=commit, step=step, repo_known=True, endpoint=endpoint,
                              what=f"file {filename!r}", offline=self.offline):
            return Path(hf_hub_download(repo, filename, **kwargs))

    def _map(self, func, jobs: list[tuple]) -> list:
        if len(jobs) <= 1 or self.max_workers <= 1:
            return [func(*job) for job in jobs]
        with ThreadPoolExecutor(max_workers=min(self.max_workers, len(jobs))) as pool:
            return list(pool.map(lambda job: func(*job), jobs))


def _check_blobs(ref: CheckpointRef, paths: list[Path]) -> None:
    """Cheap integrity check: a cached LFS blob is named by its sha256 (no re-hashing)."""
    if not ref.lfs_sha256:
        return
    for path, expected in zip(paths, ref.lfs_sha256, strict=True):
        name = path.resolve().name
        if path.is_symlink() and len(name) == 64 and name != expected:
            raise IntegrityError(
                f"step {ref.step}: {path.name} in the cache has sha256 {name}, the Hub listed {expected}",
                path=path, step=ref.step, hint="Delete the cached revision and fetch it again.",
            )


__all__ = ["HubSource"]
