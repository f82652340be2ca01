"""Where a store lives: a local folder or an fsspec URL (``s3://``, ``gs://``, ``memory://`` ...).

:class:`StoreLocation` is the one record that names a store everywhere (the audit, ``show``,
``metrics``, ``export``, ``report``). A local path (or a ``file://`` URL) keeps every guarantee
of a folder on disk (atomic creation by rename, the deletion rules of
:mod:`flq_audit.store._safety`); any other URL is opened through fsspec with the given storage
options, and the environment variables its filesystem reads (``AWS_ENDPOINT_URL``,
``AWS_ACCESS_KEY_ID`` ...) apply as that filesystem defines them. A URL whose filesystem is not
installed is refused with :class:`~flq_audit.errors.OptionError` naming the package, never
taken for a local folder with a colon in its name.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flq_audit.errors import (
    FlqAuditError,
    NetworkError,
    OptionError,
    StoreNotFoundError,
    is_network_error,
)
from flq_audit.store._filesystems import check_release, checked

if TYPE_CHECKING:
    from zarr.abc.store import Store

#: ``scheme://`` at the start of a store name.
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*)://")
#: The package that provides a protocol's filesystem, for the install hint.
_PACKAGES = {"s3": "s3fs", "s3a": "s3fs", "gs": "gcsfs", "gcs": "gcsfs", "az": "adlfs",
             "abfs": "adlfs", "abfss": "adlfs", "adl": "adlfs", "hf": "huggingface_hub",
             "http": "aiohttp", "https": "aiohttp", "sftp": "paramiko", "ssh": "paramiko"}
#: Protocols whose first path component is a bucket (or container) that must exist.
_BUCKETS = frozenset({"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "adl"})
#: Extras of flq-audit that install a protocol's filesystem.
_EXTRAS = {"s3": "s3", "s3a": "s3"}


def parse_storage_options(text: str | None) -> dict[str, Any]:
    """``--storage-options JSON`` as a dict (an :class:`OptionError` unless a JSON object)."""
    if text is None or not text.strip():
        return {}
    try:
        value = json.loads(text)
    except ValueError as err:
        raise OptionError(f"--storage-options is not valid JSON ({err})",
                          hint="Give a JSON object, e.g. '{\"anon\": true}'.") from err
    if not isinstance(value, dict):
        raise OptionError(f"--storage-options must be a JSON object, got {type(value).__name__}",
                          hint="Give a JSON object, e.g. '{\"anon\": true}'.")
    return value


#: Storage options fsspec filesystems read with one JSON type (s3fs, gcsfs, adlfs ...).
_OPTION_TYPES: dict[str, tuple[type, ...]] = {
    "anon": (bool,), "use_ssl": (bool,), "requester_pays": (bool,), "version_aware": (bool,),
    "use_listings_cache": (bool,), "skip_instance_cache": (bool,), "asynchronous": (bool,),
    "key": (str,), "secret": (str,), "token": (str, dict), "profile": (str,),
    "endpoint_url": (str,), "region_name": (str,), "username": (str,), "password": (str,),
    "account_name": (str,), "account_key": (str,), "connection_string": (str,),
    "project": (str,), "default_block_size": (int,), "listings_expiry_time": (int, float),
}
_JSON_TYPES = {bool: "true or false", str: "a string", dict: "a JSON object",
               int: "an integer", float: "a number"}


def check_storage_options(options: Mapping[str, Any], prefix: str = "") -> None:
    """Refuse option values of the wrong JSON type before a filesystem sees them (exit 2).

    Keys ending in ``_kwargs`` (``client_kwargs``, ``config_kwargs`` ...) are keyword arguments
    passed on as they are: JSON objects, checked in turn; the keys of :data:`_OPTION_TYPES`
    have one type. Other keys are left to the filesystem.
    """
    for key, value in options.items():
        name = f"--storage-options: {prefix + key!r}"
        if key.endswith("_kwargs"):
            if not isinstance(value, dict):
                raise OptionError(f"{name} must be a JSON object; got {_json_type(value)}",
                                  hint='e.g. \'{"client_kwargs": {"endpoint_url": '
                                  '"http://127.0.0.1:9000"}}\'')
            check_storage_options(value, f"{prefix}{key}.")
            continue
        wanted = _OPTION_TYPES.get(key)
        if wanted is not None and value is not None and not _fits(value, wanted):
            expected = " or ".join(_JSON_TYPES[t] for t in wanted)
            raise OptionError(f"{name} must be {expected}; got {_json_type(value)}")


def _fits(value: object, wanted: tuple[type, ...]) -> bool:
    """``value`` has one of the JSON types ``wanted`` (a boolean is no number; an integer is)."""
    if isinstance(value, bool):
        return bool in wanted
    if isinstance(value, int) and float in wanted:
        return True
    return isinstance(value, wanted)


def _json_type(value: object) -> str:
    names = {bool: "a boolean", str: "a string", int: "an integer", float: "a number",
             list: "a list", dict: "a JSON object", type(None): "null"}
    return f"{names.get(type(value), type(value).__name__)} ({json.dumps(value, default=str)})"


@dataclass(frozen=True)
class StoreLocation:
    """A store's address: ``url`` (a local path or an fsspec URL) and fsspec storage options."""

    url: str
    storage_options: Mapping[str, Any] = field(default_factory=dict, hash=False)

    @classmethod
    def parse(cls, target: str | Path | StoreLocation,
              storage_options: Mapping[str, Any] | None = None) -> StoreLocation:
        """Normalise a path, URL or location once; check that a URL's filesystem is installed."""
        if isinstance(target, StoreLocation):
            if storage_options:
                return cls(target.url, {**target.storage_options, **storage_options})
            return target
        text = str(target)
        options = dict(storage_options or {})
        match = _SCHEME.match(text)
        if isinstance(target, Path) or match is None:
            return cls(text, options)
        protocol = match.group(1).lower()
        if protocol in ("file", "local"):
            return cls(text[match.end():] or "/", options)
        _require_filesystem(protocol, text)
        check_storage_options(options)
        return cls(text.rstrip("/"), options)

    # ------------------------------------------------------------------ naming
    @property
    def is_local(self) -> bool:
        """A folder on this machine (a plain path): renames, deletion rules and locks apply."""
        return _SCHEME.match(self.url) is None

    @property
    def protocol(self) -> str:
        """``file`` for local stores, else the URL's scheme (``s3``, ``memory`` ...)."""
        match = _SCHEME.match(self.url)
        return "file" if match is None else match.group(1).lower()

    @property
    def path(self) -> Path:
        """The local folder (only for local stores)."""
        if not self.is_local:
            raise TypeError(f"{self.url!r} is not a local store")
        return Path(self.url)

    @property
    def display(self) -> str:
        """How messages name the store: the path or URL as given (never the credentials)."""
        return self.url

    @property
    def name(self) -> str:
        """The last component (``x.zarr`` of ``s3://bucket/x.zarr``)."""
        return self.url.rstrip("/").rsplit("/", 1)[-1]

    def __str__(self) -> str:
        return self.display

    # ------------------------------------------------------------------ access
    def zarr_store(self, *, read_only: bool = False) -> Store:
        """zarr 3's store for this location (``LocalStore`` or ``FsspecStore``)."""
        from zarr.storage import FsspecStore, LocalStore

        if self.is_local:
            return LocalStore(self.path, read_only=read_only)
        try:
            return FsspecStore.from_url(self.url, storage_options=dict(self.storage_options),
                                        read_only=read_only)
        except (TypeError, ValueError) as err:
            raise OptionError(f"cannot open store {self.url!r} ({err})",
                              hint="Check the URL and --storage-options.") from err

    def filesystem(self) -> tuple[Any, str]:
        """A synchronous fsspec filesystem and the store's root path on it (URL stores)."""
        from fsspec.core import url_to_fs

        fs, root = url_to_fs(self.url, **dict(self.storage_options))
        return checked(fs, self.url), root

    def key_path(self, key: str) -> str:
        """``key`` inside the store: a local path, or the path on the URL's filesystem."""
        if self.is_local:
            return str(self.path / key)
        return f"{self.filesystem()[1].rstrip('/')}/{key}"

    def exists(self) -> bool:
        """Anything is at this location (a folder, a file, a link, or objects under the prefix).

        Raises :class:`StoreNotFoundError` when the URL's bucket does not exist (no store can
        be made there) and :class:`NetworkError` when its endpoint cannot be reached."""
        if self.is_local:
            return self.path.exists() or self.path.is_symlink()
        fs, root = self.filesystem()
        with self.remote():
            if fs.exists(root):
                return True
            self._require_bucket(fs, root)
        return False

    def read_bytes(self, key: str) -> bytes | None:
        """The bytes of ``key`` inside the store, or None when it is missing."""
        try:
            if self.is_local:
                return (self.path / key).read_bytes()
            fs, root = self.filesystem()
            with self.remote():
                return bytes(fs.cat_file(f"{root.rstrip('/')}/{key}"))
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return None

    def delete(self) -> None:
        """Remove everything at this location (callers check :mod:`_safety` rules first)."""
        if self.is_local:
            if self.path.is_symlink() or self.path.is_file():
                self.path.unlink()
            elif self.path.exists():
                shutil.rmtree(self.path)
            return
        fs, root = self.filesystem()
        with self.remote():
            if fs.exists(root):
                fs.rm(root, recursive=True)

    def size_bytes(self) -> int:
        """Bytes stored under this location."""
        if self.is_local:
            return sum(f.stat().st_size for f in self.path.rglob("*") if f.is_file())
        fs, root = self.filesystem()
        with self.remote():
            return int(fs.du(root)) if fs.exists(root) else 0

    # ------------------------------------------------------------------ remote failures
    @property
    def endpoint(self) -> str:
        """The server a URL store talks to, as messages name it."""
        client = self.storage_options.get("client_kwargs")
        given = self.storage_options.get("endpoint_url") or (
            client.get("endpoint_url") if isinstance(client, Mapping) else None)
        if self.protocol in ("s3", "s3a"):
            given = given or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get(
                "AWS_ENDPOINT_URL")
        return repr(str(given)) if given else f"the default {self.protocol}:// endpoint"

    @contextlib.contextmanager
    def remote(self) -> Iterator[None]:
        """Turn a failure to reach the store's server into :class:`NetworkError` (exit 7)
        naming the endpoint and the store."""
        try:
            yield
        except FlqAuditError:
            raise
        except Exception as err:
            if not is_network_error(err):
                raise
            text = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise NetworkError(
                f"cannot reach {self.endpoint}, the endpoint of store {self.url!r} "
                f"({type(err).__name__}: {text})", path=self.url,
                hint="Check the endpoint (--storage-options '{\"client_kwargs\": "
                "{\"endpoint_url\": ...}}' or AWS_ENDPOINT_URL) and that its server runs.",
            ) from err

    def _require_bucket(self, fs: Any, root: str) -> None:
        """Refuse a store in a bucket that does not exist (exit 3), naming the bucket."""
        bucket = root.strip("/").split("/", 1)[0]
        if self.protocol not in _BUCKETS or not bucket or bucket == root.strip("/"):
            return
        if not fs.exists(bucket):
            raise StoreNotFoundError(
                f"bucket {bucket!r} of store {self.url!r} does not exist (or these "
                f"credentials cannot see it) at {self.endpoint}", path=self.url,
                hint=f"Create the bucket first (e.g. `aws s3 mb {self.protocol}://{bucket}`), "
                "or check the URL and --storage-options.")


def _require_filesystem(protocol: str, url: str) -> None:
    """Refuse a URL whose fsspec filesystem is unknown or not installed (exit 2)."""
    import fsspec

    try:
        filesystem = fsspec.get_filesystem_class(protocol)
    except ImportError as err:
        package = _PACKAGES.get(protocol)
        install = f"pip install {package}" if package else "install its fsspec filesystem"
        if protocol in _EXTRAS:
            install += f" (or pip install 'flq-audit[{_EXTRAS[protocol]}]')"
        raise OptionError(
            f"store {url!r}: the {protocol}:// filesystem is not installed"
            + (f" (package {package!r})" if package else ""),
            hint=f"Run `{install}`, then try again.") from err
    except ValueError as err:
        raise OptionError(f"store {url!r}: unknown protocol {protocol!r}",
                          hint="Give a local path or an fsspec URL such as s3://bucket/x.zarr.",
                          ) from err
    check_release(filesystem.__module__.split(".")[0], url)


__all__ = ["StoreLocation", "check_storage_options", "parse_storage_options"]
