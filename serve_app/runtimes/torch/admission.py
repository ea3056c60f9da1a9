"""What the torch runtime admits from the repository: TorchScript entries it executes as Triton would.

`load_model_spec` accepts only what the embedded torch runtime executes as Triton would: an
entry it cannot serve faithfully (another backend, an ensemble, sequence batching, ...) gets a
reason saying so, and that `runtime: triton` serves it. A broken entry becomes a
`RepositoryEntry` with an error, never an exception, so the other models serve.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tritonclient.grpc import model_config_pb2

from serve_app.datatypes import NUMPY_BY_DATATYPE, from_config_type
from serve_app.repository import (
    TORCHSCRIPT_BACKEND,
    TORCHSCRIPT_PLATFORM,
    ModelEntryError,
    ModelSignature,
    config_override,
    message_to_dict,
    parse_config,
    select_versions,
    version_dirs,
)

logger = logging.getLogger(__name__)

DEFAULT_MODEL_FILENAME = "model.pt"
TRITON_SERVES_IT = "runtime: triton serves it"
_INSTANCE_KINDS = (
    model_config_pb2.ModelInstanceGroup.KIND_AUTO,
    model_config_pb2.ModelInstanceGroup.KIND_CPU,
    model_config_pb2.ModelInstanceGroup.KIND_GPU,
)


@dataclass(frozen=True)
class DynamicBatching:
    max_queue_delay_us: int
    preferred_batch_sizes: tuple[int, ...]


@dataclass(frozen=True)
class ModelSpec:
    """A parsed, valid TorchScript model entry with the versions its policy selects."""

    name: str
    path: Path
    config: model_config_pb2.ModelConfig
    versions: tuple[int, ...]  # ascending

    @property
    def max_batch_size(self) -> int:
        return self.config.max_batch_size

    @property
    def dynamic_batching(self) -> DynamicBatching | None:
        if not self.config.HasField("dynamic_batching"):
            return None
        batching = self.config.dynamic_batching
        return DynamicBatching(
            max_queue_delay_us=batching.max_queue_delay_microseconds,
            preferred_batch_sizes=tuple(sorted(batching.preferred_batch_size)),
        )

    @property
    def instances(self) -> int:
        """Model instances, as Triton counts the instance groups (a group's count defaults to 1)."""
        counts = [max(g.count, 1) for g in self.config.instance_group if g.kind in _INSTANCE_KINDS]
        return sum(counts) or 1

    def model_file(self, version: int) -> Path:
        filename = self.config.default_model_filename or DEFAULT_MODEL_FILENAME
        return self.path / str(version) / filename

    def config_dict(self) -> dict[str, Any]:
        """The config as Triton's `/config` endpoint renders it (snake_case keys)."""
        return message_to_dict(self.config)

    def signature(self) -> ModelSignature:
        """Read on every request: derived from the config once, not per call."""
        return self._signature

    @functools.cached_property
    def _signature(self) -> ModelSignature:
        return ModelSignature.from_config(self.config_dict())


@dataclass(frozen=True)
class RepositoryEntry:
    """One `<repo>/<model>` directory: a spec, or the reason it is unavailable."""

    name: str
    spec: ModelSpec | None = None
    error: str | None = None


def discover(repository: Path) -> list[RepositoryEntry]:
    """Every model directory in the repository, sorted by name."""
    entries = []
    for model_dir in sorted(p for p in repository.iterdir() if p.is_dir() and not p.name.startswith(".")):
        try:
            entries.append(RepositoryEntry(model_dir.name, spec=load_model_spec(model_dir)))
        except ModelEntryError as exc:
            logger.warning("model '%s' is unavailable: %s", model_dir.name, exc)
            entries.append(RepositoryEntry(model_dir.name, error=str(exc)))
    return entries


def load_model_spec(model_dir: Path, override: str | None = None) -> ModelSpec:
    """The entry's spec from its config.pbtxt, or from a load's `config` override (JSON), which
    replaces config.pbtxt as in Triton."""
    config = parse_config(model_dir) if override is None else config_override(model_dir.name, override)
    _check_torchscript(config)
    _check_features(config)
    _check_tensors(config)
    if not config.default_model_filename:
        config.default_model_filename = DEFAULT_MODEL_FILENAME
    if not config.HasField("version_policy"):
        config.version_policy.latest.num_versions = 1
    versions = select_versions(config, version_dirs(model_dir))
    spec = ModelSpec(name=model_dir.name, path=model_dir, config=config, versions=versions)
    for version in versions:
        if not spec.model_file(version).is_file():
            raise ModelEntryError(f"model file {spec.model_file(version)} does not exist")
    return spec


def _check_torchscript(config: model_config_pb2.ModelConfig) -> None:
    if config.platform == TORCHSCRIPT_PLATFORM or config.backend == TORCHSCRIPT_BACKEND:
        if not config.platform:
            config.platform = TORCHSCRIPT_PLATFORM
        return
    found = config.platform or config.backend
    fix = TRITON_SERVES_IT if found else f'set platform: "{TORCHSCRIPT_PLATFORM}" or backend: "pytorch"'
    raise ModelEntryError(
        f"platform/backend '{found or 'none'}' is not TorchScript, "
        f"the only kind the torch runtime executes; {fix}"
    )


def _check_features(config: model_config_pb2.ModelConfig) -> None:
    """Refuse what the torch runtime would otherwise ignore, and so answer differently from Triton."""
    batching = config.dynamic_batching
    unsupported = {
        "sequence_batching": config.HasField("sequence_batching"),
        "batch_input": bool(config.batch_input),
        "batch_output": bool(config.batch_output),
        "dynamic_batching.priority_levels": bool(batching.priority_levels or batching.priority_queue_policy),
        "dynamic_batching.default_queue_policy": bool(batching.default_queue_policy.ListFields()),
    }
    found = [name for name, present in unsupported.items() if present]
    if found:
        raise ModelEntryError(f"{', '.join(found)}: not supported by the torch runtime; {TRITON_SERVES_IT}")


def _check_tensors(config: model_config_pb2.ModelConfig) -> None:
    if config.max_batch_size < 0:
        raise ModelEntryError(f"max_batch_size must be >= 0, got {config.max_batch_size}")
    too_large = [p for p in config.dynamic_batching.preferred_batch_size if p > config.max_batch_size]
    if too_large:
        raise ModelEntryError(
            f"dynamic_batching preferred_batch_size {too_large} exceeds "
            f"max_batch_size {config.max_batch_size}"
        )
    for kind, tensors in (("input", config.input), ("output", config.output)):
        if not tensors:
            raise ModelEntryError(f"config.pbtxt declares no {kind}")
        for tensor in tensors:
            if kind == "input" and tensor.optional:
                raise ModelEntryError(
                    f"input '{tensor.name}' is optional: Triton's PyTorch backend refuses optional "
                    "inputs, and so does the torch runtime (runtime: triton serves them on other backends)"
                )
            datatype = from_config_type(model_config_pb2.DataType.Name(tensor.data_type))
            if datatype not in NUMPY_BY_DATATYPE:
                raise ModelEntryError(f"{kind} '{tensor.name}' has unsupported datatype {datatype}")
            if any(d < -1 or d == 0 for d in tensor.dims) or (not tensor.dims and not config.max_batch_size):
                raise ModelEntryError(f"{kind} '{tensor.name}' has invalid dims {list(tensor.dims)}")
            if tensor.HasField("reshape"):
                _check_reshape(kind, tensor.name, tuple(tensor.dims), tuple(tensor.reshape.shape))
            if datatype == "BYTES":
                _check_strings(config, kind, tensor)


def _check_strings(
    config: model_config_pb2.ModelConfig,
    kind: str,
    tensor: model_config_pb2.ModelInput | model_config_pb2.ModelOutput,
) -> None:
    """Triton's PyTorch backend passes BYTES to TorchScript as List[str] (and takes List[str]
    back): one dimension, the batch's included, after any reshape. Triton refuses the rest with
    this text, and so does the torch runtime."""
    dims = tensor.reshape.shape if tensor.HasField("reshape") else tensor.dims
    if len(dims) + (1 if config.max_batch_size > 0 else 0) > 1:
        raise ModelEntryError(
            f"Triton only supports 1 dimensional List of String as {kind} for '{tensor.name}' for model "
            f"'{config.name}'"
        )


def _check_reshape(kind: str, name: str, dims: tuple[int, ...], shape: tuple[int, ...]) -> None:
    """As Triton: the element counts between variable dims must match pairwise (they carry over in order)."""
    if any(d < -1 or d == 0 for d in shape) or _trunks(dims) != _trunks(shape):
        raise ModelEntryError(
            f"{kind} '{name}' has different size for dims {list(dims)} and reshape {list(shape)}"
        )


def _trunks(dims: tuple[int, ...]) -> list[int]:
    """Element counts of the runs of fixed dims around each variable one: [2, 4, -1, 6] → [8, 6]."""
    counts = [1]
    for dim in dims:
        if dim == -1:
            counts.append(1)
        else:
            counts[-1] *= dim
    return counts
