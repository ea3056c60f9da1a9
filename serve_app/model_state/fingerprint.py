"""What a repository holds, model by model, so that polling sees what was added, changed or removed.

A model's fingerprint covers every file under its directory (name, size, and modification time
or the store's ETag). Names starting with "." are skipped, so a version can be written beside
the model as `.2` and renamed to `2` when complete, instead of being read half-written.
"""

from __future__ import annotations

import functools
import hashlib
import logging
from collections.abc import Iterable
from pathlib import Path, PurePosixPath

from serve_app.storage import RepositoryURL, filesystem

logger = logging.getLogger(__name__)


def fingerprinter(repository: Path | RepositoryURL) -> functools.partial[dict[str, str] | None]:
    """The fingerprint function of a local repository or one on object storage."""
    if isinstance(repository, RepositoryURL):
        return functools.partial(store_fingerprints, repository)
    return functools.partial(local_fingerprints, repository)


def _digest(entries: Iterable[tuple[str, object, object]]) -> str:
    digest = hashlib.sha256()
    for entry in sorted(entries, key=lambda e: e[0]):
        digest.update("\0".join(map(str, entry)).encode() + b"\n")
    return digest.hexdigest()[:16]


def _hidden(parts: Iterable[str]) -> bool:
    return any(part.startswith(".") for part in parts)


def local_fingerprints(root: Path) -> dict[str, str] | None:
    try:
        fingerprints = {}
        for model_dir in sorted(root.iterdir()):
            if not model_dir.is_dir() or model_dir.name.startswith("."):
                continue
            entries = []
            for path in model_dir.rglob("*"):
                relative = path.relative_to(model_dir)
                if not _hidden(relative.parts) and path.is_file():
                    info = path.stat()
                    entries.append((str(relative), info.st_size, info.st_mtime_ns))
            fingerprints[model_dir.name] = _digest(entries)
        return fingerprints
    except OSError as exc:
        logger.warning("repository poll: cannot read %s: %s", root, exc)
        return None


def store_fingerprints(location: RepositoryURL) -> dict[str, str] | None:
    try:
        objects = filesystem(location).find(location.root, detail=True)
    except Exception as exc:  # noqa: BLE001 - any store failure: keep the last listing
        logger.warning("repository poll: cannot list %s: %s", location, exc)
        return None
    root = PurePosixPath(location.root)
    by_model: dict[str, list[tuple[str, object, object]]] = {}
    for name, info in objects.items():
        relative = PurePosixPath(name).relative_to(root)
        if len(relative.parts) < 2 or _hidden(relative.parts):
            continue
        stamp = info.get("ETag") or info.get("LastModified") or info.get("mtime")
        by_model.setdefault(relative.parts[0], []).append((str(relative), info.get("size"), stamp))
    return {model: _digest(entries) for model, entries in sorted(by_model.items())}
