"""Model repositories on object storage: `s3://`, `gs://` and `as://`, as standalone Triton takes them.

`runtime: triton` hands the URL to Triton, which reads these stores itself. `runtime: torch`
reads the same layout through fsspec (`s3fs`, `gcsfs`, `adlfs`: the extras `serve-app[s3]`,
`[gcs]`, `[azure]`) into a local mirror per replica (`RepositoryMirror`), re-read model by model
on every load, so versions, version policy and load/unload behave as for a local repository.
Credentials come from the environment the standard way (AWS_*, GOOGLE_APPLICATION_CREDENTIALS,
AZURE_STORAGE_*) and are never logged or shown.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import shutil
import tempfile
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

FIELD = "applications[].args.model_repository"
SCHEMES = ("s3", "gs", "as")
# Triton's S3 forms: s3://bucket/path, or an endpoint s3://[http://|https://]host:port/bucket/path.
_S3_ENDPOINT = re.compile(r"(?P<scheme>https?://)?(?P<host>[0-9A-Za-z.\-]+):(?P<port>[0-9]+)/(?P<rest>.*)")
_BUCKET = re.compile(r"[0-9a-z][0-9a-z.\-]*")
_CREDENTIALS = {
    "s3": "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (AWS_SESSION_TOKEN, AWS_DEFAULT_REGION, AWS_PROFILE)",
    "gs": "GOOGLE_APPLICATION_CREDENTIALS",
    "as": "AZURE_STORAGE_ACCOUNT and AZURE_STORAGE_KEY",
}
_EXTRA = {"s3": "s3", "gs": "gcs", "as": "azure"}


class StorageError(RuntimeError):
    """The repository's store cannot be read: the message names the field, the URL and the fix."""


@dataclass(frozen=True)
class RepositoryURL:
    """A model repository on object storage; `str()` is the URL Triton takes."""

    url: str
    scheme: str  # s3 | gs | as
    container: str  # the bucket (s3, gs) or the storage account's container (as)
    prefix: str  # the repository's path inside it, without slashes at either end
    endpoint: str | None = None  # s3 only: an S3-compatible server, e.g. http://127.0.0.1:9000
    account: str | None = None  # as only: the storage account

    def __str__(self) -> str:
        return self.url

    @property
    def root(self) -> str:
        """The repository's path as fsspec names it (no scheme)."""
        return f"{self.container}/{self.prefix}".rstrip("/")

    def credentials_hint(self) -> str:
        return (
            f"check that it exists and that the credentials ({_CREDENTIALS[self.scheme]}, set in the "
            "Serve config's runtime_env.env_vars or on every node) may read it"
        )


def is_url(text: str) -> bool:
    """Whether a model_repository value names a store rather than a local directory."""
    return "://" in text


def parse_url(text: str) -> RepositoryURL:
    """Parse the URL forms standard Triton accepts; ValueError names what is wrong and the forms."""
    scheme, _, rest = text.partition("://")
    if scheme not in SCHEMES:
        raise ValueError(
            f"'{text}': unsupported scheme '{scheme}://'; a local directory or one of s3://bucket/path, "
            "s3://[http://|https://]host:port/bucket/path, gs://bucket/path, as://account/container/path"
        )
    endpoint = account = None
    if scheme == "s3" and (match := _S3_ENDPOINT.fullmatch(rest)):
        endpoint = f"{match['scheme'] or 'http://'}{match['host']}:{match['port']}"
        rest = match["rest"]
    if scheme == "as":
        account, _, rest = rest.partition("/")
        if not account:
            raise ValueError(f"'{text}': no storage account; the form is as://account/container/path")
    container, _, prefix = rest.strip("/").partition("/")
    if not container:
        kind = "container; the form is as://account/container/path" if scheme == "as" else "bucket"
        raise ValueError(f"'{text}': no {kind}")
    if scheme != "as" and not _BUCKET.fullmatch(container):
        raise ValueError(f"'{text}': '{container}' is not a bucket name (lower-case letters, digits, . -)")
    return RepositoryURL(text, scheme, container, re.sub("/+", "/", prefix.strip("/")), endpoint, account)


def filesystem(location: RepositoryURL) -> Any:
    """The fsspec filesystem of the store, credentials from the environment."""
    try:
        import fsspec

        if location.scheme == "s3":
            return fsspec.filesystem("s3", endpoint_url=location.endpoint, skip_instance_cache=True)
        if location.scheme == "gs":
            return fsspec.filesystem("gcs", skip_instance_cache=True)
        return fsspec.filesystem(
            "abfs",
            account_name=location.account,
            account_key=os.environ.get("AZURE_STORAGE_KEY"),
            skip_instance_cache=True,
        )
    except ImportError as exc:
        raise StorageError(
            f"{FIELD} is '{location}': the torch runtime reads {location.scheme}:// repositories through "
            f"fsspec ({exc}); pip install 'serve-app[{_EXTRA[location.scheme]}]'"
        ) from None


def unreadable(location: RepositoryURL, exc: BaseException) -> StorageError:
    """The error for a store that refused or failed a read, without credentials in it."""
    reason = str(exc).strip() or type(exc).__name__
    return StorageError(
        f"{FIELD}: cannot read '{location}' ({type(exc).__name__}: {reason}); {location.credentials_hint()}"
    )


def probe(location: RepositoryURL) -> list[str]:
    """The model directories the store holds (a pre-flight check); StorageError when it cannot say."""
    fs = filesystem(location)
    try:
        entries = fs.ls(location.root, detail=True)
    except Exception as exc:  # noqa: BLE001 - any store failure is reported the same way
        raise unreadable(location, exc) from None
    names = sorted(Path(e["name"]).name for e in entries if e.get("type") == "directory")
    if not names:
        raise StorageError(f"{FIELD}: '{location}' holds no model directory; {location.credentials_hint()}")
    return names


class RepositoryMirror:
    """A local copy of a repository on object storage, for the torch runtime (one per replica).

    `fetch()` copies the whole repository at start; `fetch(model)` re-reads one model's directory
    before a load, so a model added to or changed in the bucket loads as it is there now, and a
    model gone from it is gone here too. The copy lives in a temporary directory removed when the
    mirror is collected or the process exits.
    """

    def __init__(self, location: RepositoryURL) -> None:
        self.location = location
        self._fs = filesystem(location)
        self._directory = tempfile.mkdtemp(prefix="serve_app-repository-")
        self._cleanup = weakref.finalize(self, shutil.rmtree, self._directory, ignore_errors=True)
        self.root = Path(self._directory) / "repository"
        self.root.mkdir()

    async def fetch(self, model: str | None = None) -> None:
        """Bring the mirror (or one model's directory) up to date with the store."""
        await asyncio.to_thread(self._fetch, model)

    def _fetch(self, model: str | None) -> None:
        if model is not None and (not model or model.startswith(".") or "/" in model or "\\" in model):
            raise StorageError(f"'{model}' is not a model directory name")  # never outside the mirror
        source = self.location.root if model is None else f"{self.location.root}/{model}"
        staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=self._directory))
        try:
            found = self._download(source, staging, missing_ok=model is not None)
            target = self.root if model is None else self.root / model
            shutil.rmtree(target, ignore_errors=True)
            if found:
                staging.rename(target)
            if model is None:
                logger.info("mirrored %s into %s", self.location, self.root)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def _download(self, source: str, destination: Path, missing_ok: bool) -> bool:
        """Copy every object under `source`; False when there is none and `missing_ok`."""
        try:
            self._fs.invalidate_cache()  # listings from an earlier fetch are stale by now
            found = self._fs.find(source, withdirs=True, detail=True)
            files: list[str] = []
            for name, info in found.items():
                local = destination / os.path.relpath(name, source)
                if info.get("type") == "directory":
                    local.mkdir(parents=True, exist_ok=True)
                else:
                    local.parent.mkdir(parents=True, exist_ok=True)
                    files.append(name)
            if files:
                self._fs.get(files, [str(destination / os.path.relpath(f, source)) for f in files])
        except FileNotFoundError:
            if missing_ok:
                return False
            raise StorageError(
                f"{FIELD}: '{self.location}' does not exist; {self.location.credentials_hint()}"
            ) from None
        except Exception as exc:  # noqa: BLE001 - any store failure is reported the same way
            raise unreadable(self.location, exc) from None
        if not found and not missing_ok:
            raise StorageError(
                f"{FIELD}: '{self.location}' holds no model directory; {self.location.credentials_hint()}"
            )
        return bool(found)

    def close(self) -> None:
        """Remove the local copy now."""
        self._cleanup()
