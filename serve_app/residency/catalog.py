"""What a model's config says, for the calls that need no loaded model (on-demand placement).

Metadata and config of a model resident on no replica come from its config.pbtxt in a local
repository, so that clients can read them without making a replica load it; where the config
cannot tell (object storage, or a config that does not parse here), the caller loads the model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from serve_app.repository import (
    ModelEntryError,
    ModelSignature,
    message_to_dict,
    parse_config,
    select_versions,
    version_dirs,
)
from serve_app.storage import RepositoryURL


class Catalog:
    def __init__(self, repository: Path | RepositoryURL) -> None:
        self._root = repository if isinstance(repository, Path) else None

    def config(self, model: str) -> dict[str, Any] | None:
        """The model's config as Triton's /config renders it; None where the files cannot tell."""
        if self._root is None:
            return None
        try:
            return message_to_dict(parse_config(self._root / model))
        except ModelEntryError:
            return None

    def metadata(self, model: str, version: str | None) -> dict[str, Any] | None:
        """The model's metadata (all its versions, or `version` if it is one); None as for `config`."""
        if self._root is None:
            return None
        try:
            config = parse_config(self._root / model)
            if not config.HasField("version_policy"):  # Triton's default: the latest version
                config.version_policy.latest.num_versions = 1
            versions = [str(v) for v in select_versions(config, version_dirs(self._root / model))]
        except ModelEntryError:
            return None
        if version is not None and version not in versions:
            return None  # the caller's own lookup gives the error
        signature = ModelSignature.from_config(message_to_dict(config))
        return {
            "name": model,
            "versions": versions if version is None else [version],
            "platform": config.platform or config.backend,
            "inputs": [signature.tensor_metadata(t) for t in signature.inputs],
            "outputs": [signature.tensor_metadata(t) for t in signature.outputs],
        }
