"""The Triton model repository: discovery, config.pbtxt parsing, version policy.

`<repo>/<model>/config.pbtxt` is parsed with Triton's own protobuf
(`tritonclient.grpc.model_config_pb2` + `text_format`). `load_model_spec` accepts only
what the embedded torch runtime executes as Triton would: an entry it cannot serve
faithfully (another backend, an ensemble, sequence batching, ...) gets a reason saying
so, and that `runtime: triton` serves it. A broken entry becomes a `RepositoryEntry` with
an error, never an exception, so the other models serve.
"""

from __future__ import annotations

import functools
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from google.protobuf import text_format
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from tritonclient.grpc import model_config_pb2

from serve_app.datatypes import NUMPY_BY_DATATYPE, from_config_type

logger = logging.getLogger(__name__)

TORCHSCRIPT_PLATFORM = "pytorch_libtorch"
TORCHSCRIPT_BACKEND = "pytorch"
DEFAULT_MODEL_FILENAME = "model.pt"
TRITON_SERVES_IT = "runtime: triton serves it"
# Triton ignores version directories that are not numbers or that begin with 0.
_VERSION_DIR = re.compile(r"[1-9][0-9]*")
_INSTANCE_KINDS = (
    model_config_pb2.ModelInstanceGroup.KIND_AUTO,
    model_config_pb2.ModelInstanceGroup.KIND_CPU,
    model_config_pb2.ModelInstanceGroup.KIND_GPU,
)


class ModelEntryError(Exception):
    """Why a repository entry cannot be served (becomes its UNAVAILABLE reason)."""


@dataclass(frozen=True)
class TensorSpec:
    """One input or output: wire datatype and dims without the implicit batch dim."""

    name: str
    datatype: str
    dims: tuple[int, ...]


@dataclass(frozen=True)
class ModelSignature:
    """What the dataplane validates requests against; derived from a config dict."""

    name: str
    max_batch_size: int
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> ModelSignature:
        """Read Triton's JSON model config (as `/config` returns it)."""

        def tensors(key: str) -> tuple[TensorSpec, ...]:
            return tuple(
                TensorSpec(
                    t["name"],
                    from_config_type(t.get("data_type", "TYPE_INVALID")),
                    tuple(int(d) for d in t.get("dims", ())),
                )
                for t in config.get(key, ())
            )

        return cls(
            name=config["name"],
            max_batch_size=int(config.get("max_batch_size", 0)),
            inputs=tensors("input"),
            outputs=tensors("output"),
        )

    def tensor_metadata(self, tensor: TensorSpec) -> dict[str, Any]:
        """KServe metadata for a tensor: the batch dim shows as -1."""
        shape = [-1, *tensor.dims] if self.max_batch_size > 0 else list(tensor.dims)
        return {"name": tensor.name, "datatype": tensor.datatype, "shape": shape}


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


def message_to_dict(message: Message) -> dict[str, Any]:
    """Protobuf → dict with proto field names, enum names and int64 kept as numbers.

    `json_format.MessageToDict` renders int64 as strings, which Triton does not. Map keys
    become strings (JSON object keys), e.g. `priority_queue_policy`'s uint64 keys.
    """
    result: dict[str, Any] = {}
    for descriptor, value in message.ListFields():
        if descriptor.message_type is not None and descriptor.message_type.GetOptions().map_entry:
            value_field = descriptor.message_type.fields_by_name["value"]
            result[descriptor.name] = {str(k): _field_value(value_field, v) for k, v in value.items()}
        elif _is_repeated(descriptor):
            result[descriptor.name] = [_field_value(descriptor, v) for v in value]
        else:
            result[descriptor.name] = _field_value(descriptor, value)
    return result


def _is_repeated(descriptor: FieldDescriptor) -> bool:
    """`is_repeated` where protobuf has it (6+), `label` (deprecated there) before."""
    if hasattr(descriptor, "is_repeated"):
        return descriptor.is_repeated
    return descriptor.label == FieldDescriptor.LABEL_REPEATED


def _field_value(descriptor: FieldDescriptor, value: Any) -> Any:
    if descriptor.type == FieldDescriptor.TYPE_MESSAGE:
        return message_to_dict(value)
    if descriptor.type == FieldDescriptor.TYPE_ENUM:
        return descriptor.enum_type.values_by_number[value].name
    return value


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


def parse_config(model_dir: Path) -> model_config_pb2.ModelConfig:
    """Parse `<model_dir>/config.pbtxt`, filling the name Triton fills from the directory."""
    config_path = model_dir / "config.pbtxt"
    if not config_path.is_file():
        raise ModelEntryError(f"{config_path} does not exist")
    config = model_config_pb2.ModelConfig()
    try:
        text_format.Parse(config_path.read_text(), config)
    except (text_format.ParseError, UnicodeDecodeError, OSError) as exc:  # OSError: e.g. unreadable
        raise ModelEntryError(f"cannot parse {config_path}: {exc}") from None
    if config.name and config.name != model_dir.name:
        raise ModelEntryError(
            f"config.pbtxt names the model '{config.name}' but its directory is '{model_dir.name}'"
        )
    config.name = model_dir.name
    return config


def load_model_spec(model_dir: Path) -> ModelSpec:
    config = parse_config(model_dir)
    _check_torchscript(config)
    _check_features(config)
    _check_tensors(config)
    if not config.default_model_filename:
        config.default_model_filename = DEFAULT_MODEL_FILENAME
    if not config.HasField("version_policy"):
        config.version_policy.latest.num_versions = 1
    versions = select_versions(config, _version_dirs(model_dir))
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
            datatype = from_config_type(model_config_pb2.DataType.Name(tensor.data_type))
            if datatype not in NUMPY_BY_DATATYPE:
                raise ModelEntryError(f"{kind} '{tensor.name}' has unsupported datatype {datatype}")
            if any(d < -1 or d == 0 for d in tensor.dims) or (not tensor.dims and not config.max_batch_size):
                raise ModelEntryError(f"{kind} '{tensor.name}' has invalid dims {list(tensor.dims)}")
            if tensor.HasField("reshape"):
                _check_reshape(kind, tensor.name, tuple(tensor.dims), tuple(tensor.reshape.shape))


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


def _version_dirs(model_dir: Path) -> list[int]:
    return sorted(int(p.name) for p in model_dir.iterdir() if p.is_dir() and _VERSION_DIR.fullmatch(p.name))


def select_versions(config: model_config_pb2.ModelConfig, available: list[int]) -> tuple[int, ...]:
    """Apply Triton's version_policy (latest N, all, specific) to the version directories."""
    policy = config.version_policy.WhichOneof("policy_choice")
    if policy == "all":
        chosen = available
    elif policy == "specific":
        wanted = set(config.version_policy.specific.versions)
        missing = sorted(wanted - set(available))
        if missing:
            raise ModelEntryError(f"version_policy names versions {missing} that have no directory")
        chosen = sorted(wanted)
    else:
        num = config.version_policy.latest.num_versions
        chosen = available[-num:] if num > 0 else []
    if not chosen:
        raise ModelEntryError("no version directory (e.g. 1/) matches the version_policy")
    return tuple(chosen)
