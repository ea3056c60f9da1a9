"""What a Triton model repository says: config.pbtxt, version directories, model signatures.

`<repo>/<model>/config.pbtxt` is parsed with Triton's own protobuf
(`tritonclient.grpc.model_config_pb2` + `text_format`) and rendered as Triton's `/config`
renders it; `version_policy` selects versions as Triton does. What each runtime admits is its
own: the torch runtime's rules are in `runtimes/torch/admission.py`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from google.protobuf import json_format, text_format
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from tritonclient.grpc import model_config_pb2

from serve_app.datatypes import from_config_type

TORCHSCRIPT_PLATFORM = "pytorch_libtorch"
TORCHSCRIPT_BACKEND = "pytorch"
# Triton ignores version directories that are not numbers or that begin with 0.
_VERSION_DIR = re.compile(r"[1-9][0-9]*")


class ModelEntryError(Exception):
    """Why a repository entry cannot be served (becomes its UNAVAILABLE reason)."""


@dataclass(frozen=True)
class TensorSpec:
    """One input or output: wire datatype and dims without the implicit batch dim."""

    name: str
    datatype: str
    dims: tuple[int, ...]
    optional: bool = False  # an input a request may leave out (`optional: true`)


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
                    bool(t.get("optional", False)),
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
    return _named(config, model_dir.name, "config.pbtxt")


def config_override(model: str, text: str) -> model_config_pb2.ModelConfig:
    """A load's `config` parameter as Triton reads it: the JSON of a whole model configuration,
    which replaces config.pbtxt for that load (Triton's JSON parse: protobuf's, unknown fields refused)."""
    config = model_config_pb2.ModelConfig()
    try:
        json_format.Parse(text, config)
    except (json_format.ParseError, ValueError, RecursionError) as exc:
        raise ModelEntryError(f"Invalid config override: {exc}") from None
    return _named(config, model, "the config override")


def _named(config: model_config_pb2.ModelConfig, model: str, source: str) -> model_config_pb2.ModelConfig:
    """The name Triton fills from the directory; another name is refused."""
    if config.name and config.name != model:
        raise ModelEntryError(f"{source} names the model '{config.name}' but its directory is '{model}'")
    config.name = model
    return config


def version_dirs(model_dir: Path) -> list[int]:
    """The version directories Triton would see, in ascending order."""
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
