"""The model repositories Triton's QA tests run against, generated at test time (TorchScript).

A port of the libtorch branches of triton-inference-server/server r24.10 `qa/common/`:
`gen_qa_models.py` (`create_libtorch_modelfile`/`_modelconfig`: add/sub nets, `libtorch_*` and
`libtorch_nobatch_*`, versions 2 and 3 swapped), `gen_qa_identity_models.py` (identity nets,
`libtorch_zero_*`) and the models QA's L0 directories hold for the client examples (`simple`,
`simple_int8`, `simple_string`, `simple_identity`, `simple_sequence` of
`docs/examples/model_repository`), the input-validation models of `qa/L0_input_validation` and
`pt_identity` of its `test.sh`.

Where QA uses another backend (TensorFlow for `simple*`, ONNX for `onnx_zero_*`) the model here
computes the same thing in TorchScript. Two input-validation models stay Python-backend models as
in QA: Triton's PyTorch backend refuses `optional: true` inputs. Triton's PyTorch backend passes
BYTES tensors only as 1-D `List[str]`, so the string examples are non-batching with a `reshape`
from the `[1, 16]` their clients send to the `[16]` the model sees.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

STRING = np.dtype(object)
TORCH_DTYPES: dict[np.dtype, torch.dtype] = {
    np.dtype(bool): torch.bool,
    np.dtype(np.int8): torch.int8,
    np.dtype(np.int16): torch.int16,
    np.dtype(np.int32): torch.int32,
    np.dtype(np.int64): torch.int64,
    np.dtype(np.float16): torch.float16,
    np.dtype(np.float32): torch.float32,
}
CONFIG_DTYPES: dict[np.dtype, str] = {
    np.dtype(bool): "TYPE_BOOL",
    np.dtype(np.int8): "TYPE_INT8",
    np.dtype(np.int16): "TYPE_INT16",
    np.dtype(np.int32): "TYPE_INT32",
    np.dtype(np.int64): "TYPE_INT64",
    np.dtype(np.float16): "TYPE_FP16",
    np.dtype(np.float32): "TYPE_FP32",
    STRING: "TYPE_STRING",
}


def model_name(prefix: str, input_dtype: object, output0_dtype: object, output1_dtype: object) -> str:
    """`test_util.get_model_name`: `<prefix>_<in>_<out0>_<out1>` with numpy dtype names."""
    names = (np.dtype(d).name for d in (input_dtype, output0_dtype, output1_dtype))
    return "_".join((prefix, *names))


def zero_model_name(prefix: str, io_count: int, dtype: object) -> str:
    """`test_util.get_zero_model_name`: `<prefix>_zero_<io count>_<dtype>`."""
    return f"{prefix}_zero_{io_count}_{np.dtype(dtype).name}"


# --- the nets ---------------------------------------------------------------------------------


@torch.jit.script
def _sum_diff(a: Tensor, b: Tensor, swap: bool) -> tuple[Tensor, Tensor]:
    """QA's add/sub: (a + b, a - b), or (a - b, a + b) in the swapped versions 2 and 3."""
    return (a - b, a + b) if swap else (a + b, a - b)


@torch.jit.script
def _parse(values: list[str]) -> Tensor:
    return torch.tensor([int(v) for v in values])


@torch.jit.script
def _text(values: Tensor) -> list[str]:
    return [str(v.item()) for v in values]


class AddSub(nn.Module):
    """Tensors in and out; each output cast to its config dtype. Also `simple` and `simple_int8`."""

    def __init__(self, output0: torch.dtype, output1: torch.dtype, swap: bool) -> None:
        super().__init__()
        self.output0 = output0
        self.output1 = output1
        self.swap = swap

    def forward(self, INPUT0: Tensor, INPUT1: Tensor) -> tuple[Tensor, Tensor]:
        op0, op1 = _sum_diff(INPUT0, INPUT1, self.swap)
        return op0.to(self.output0), op1.to(self.output1)


class TextAddSub(AddSub):
    """Strings of integers in, tensors out (`*_object_int32_int32`)."""

    def forward(self, INPUT0: list[str], INPUT1: list[str]) -> tuple[Tensor, Tensor]:
        op0, op1 = _sum_diff(_parse(INPUT0), _parse(INPUT1), self.swap)
        return op0.to(self.output0), op1.to(self.output1)


class TextAddSubText(AddSub):
    """Strings in, strings out (`*_object_object_object`, `simple_string`)."""

    def forward(self, INPUT0: list[str], INPUT1: list[str]) -> tuple[list[str], list[str]]:
        op0, op1 = _sum_diff(_parse(INPUT0), _parse(INPUT1), self.swap)
        return _text(op0), _text(op1)


class TextAddSubTextTensor(AddSub):
    def forward(self, INPUT0: list[str], INPUT1: list[str]) -> tuple[list[str], Tensor]:
        op0, op1 = _sum_diff(_parse(INPUT0), _parse(INPUT1), self.swap)
        return _text(op0), op1.to(self.output1)


class TextAddSubTensorText(AddSub):
    def forward(self, INPUT0: list[str], INPUT1: list[str]) -> tuple[Tensor, list[str]]:
        op0, op1 = _sum_diff(_parse(INPUT0), _parse(INPUT1), self.swap)
        return op0.to(self.output0), _text(op1)


class AddSubText(AddSub):
    def forward(self, INPUT0: Tensor, INPUT1: Tensor) -> tuple[list[str], list[str]]:
        op0, op1 = _sum_diff(INPUT0, INPUT1, self.swap)
        return _text(op0), _text(op1)


class AddSubTensorText(AddSub):
    def forward(self, INPUT0: Tensor, INPUT1: Tensor) -> tuple[Tensor, list[str]]:
        op0, op1 = _sum_diff(INPUT0, INPUT1, self.swap)
        return op0.to(self.output0), _text(op1)


class AddSubTextTensor(AddSub):
    def forward(self, INPUT0: Tensor, INPUT1: Tensor) -> tuple[list[str], Tensor]:
        op0, op1 = _sum_diff(INPUT0, INPUT1, self.swap)
        return _text(op0), op1.to(self.output1)


# gen_qa_models.create_libtorch_modelfile's eight AddSubNet classes, by (input, output0, output1)
# being strings.
ADD_SUB_NETS: dict[tuple[bool, bool, bool], type[AddSub]] = {
    (False, False, False): AddSub,
    (True, False, False): TextAddSub,
    (True, True, True): TextAddSubText,
    (True, True, False): TextAddSubTextTensor,
    (True, False, True): TextAddSubTensorText,
    (False, True, True): AddSubText,
    (False, False, True): AddSubTensorText,
    (False, True, False): AddSubTextTensor,
}


class Identity1(nn.Module):
    def forward(self, input0: Tensor) -> Tensor:
        return input0


class Identity3(nn.Module):
    def forward(self, input0: Tensor, input1: Tensor, input2: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return input0, input1, input2


class TextIdentity(nn.Module):
    def forward(self, input0: list[str]) -> list[str]:
        return input0


class One(nn.Module):
    """The input-validation models' answer (QA's Python models return `[1.0]` whatever comes in)."""

    def forward(self, INPUT0: Tensor, INPUT1: Tensor, INPUT2: Tensor) -> Tensor:
        return torch.ones(1)


class Sequence(nn.Module):
    """`simple_sequence` of the examples as its clients check it: the input, plus 1 on the request
    that starts a sequence (START is the sequence batcher's control input `START__1`, 1 at the
    start; READY is `READY__2`)."""

    def forward(self, INPUT: Tensor, START: Tensor, READY: Tensor) -> Tensor:
        return INPUT + START


class Inception(nn.Module):
    """Stand-in with the signature of the examples' `inception_graphdef`: NHWC image → 1001 scores."""

    def __init__(self) -> None:
        super().__init__()
        self.scores = nn.Linear(3, 1001)

    def forward(self, input: Tensor) -> Tensor:
        return torch.softmax(self.scores(input.mean(dim=(1, 2))), dim=1)


# --- configs ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class IO:
    """One input or output of a config.pbtxt."""

    name: str
    dtype: object
    dims: tuple[int, ...]
    reshape: tuple[int, ...] | None = None
    extra: str = ""

    def text(self) -> str:
        dims = ", ".join(map(str, self.dims))
        reshape = (
            "" if self.reshape is None else f" reshape: {{ shape: [ {', '.join(map(str, self.reshape))} ] }}"
        )
        data_type = CONFIG_DTYPES[np.dtype(self.dtype)]
        return f'  {{ name: "{self.name}" data_type: {data_type} dims: [ {dims} ]{reshape}{self.extra} }}'


def config_text(
    name: str,
    max_batch: int,
    inputs: list[IO],
    outputs: list[IO],
    version_policy: str = "{ latest { num_versions: 1 } }",
    head: str = 'platform: "pytorch_libtorch"',
    tail: str = "",
) -> str:
    return "\n".join(
        [
            f'name: "{name}"',
            head,
            f"max_batch_size: {max_batch}",
            f"version_policy: {version_policy}",
            "input [",
            ",\n".join(t.text() for t in inputs),
            "]",
            "output [",
            ",\n".join(t.text() for t in outputs),
            "]",
            tail,
        ]
    )


def save(
    repository: Path, name: str, module: nn.Module, config: str, versions: dict[int, nn.Module] | None = None
) -> None:
    """`torch.jit.script` each version into `<name>/<v>/model.pt` (version 1: `module`) and write
    the config (scripted, not traced, as QA does: string lists and the swap flag need it)."""
    model_dir = repository / name
    for version, net in {1: module, **(versions or {})}.items():
        (model_dir / str(version)).mkdir(parents=True, exist_ok=True)
        torch.jit.script(net.eval()).save(str(model_dir / str(version) / "model.pt"))
    (model_dir / "config.pbtxt").write_text(config.strip() + "\n")


def is_string(dtype: object) -> bool:
    return np.dtype(dtype) == STRING


def add_sub_models(
    repository: Path,
    prefix: str,
    dtypes: tuple[object, object, object],
    shape: tuple[int, ...],
    version_policy: str | None = None,
    swapped_versions: bool = False,
) -> None:
    """`gen_qa_models.create_models` with `--libtorch`: `<prefix>_*` (max batch 8) and
    `<prefix>_nobatch_*`, inputs `INPUT0`/`INPUT1`, outputs `OUTPUT__0`/`OUTPUT__1` (QA's
    `label_filename` left out: no classification test is ported), versions 2 and 3 swapped when
    `swapped_versions`. QA's `validate_for_libtorch_model` allows string tensors only without
    batching and in 1-D."""
    input_dtype, output0_dtype, output1_dtype = dtypes
    strings = tuple(is_string(d) for d in dtypes)
    net = ADD_SUB_NETS[strings]
    torch_dtypes = [TORCH_DTYPES.get(np.dtype(d), torch.int64) for d in (output0_dtype, output1_dtype)]
    for max_batch, name_prefix in ((8, prefix), (0, f"{prefix}_nobatch")):
        if any(strings) and (max_batch or len(shape) > 1):
            continue
        name = model_name(name_prefix, *dtypes)
        config = config_text(
            name,
            max_batch,
            [IO("INPUT0", input_dtype, shape), IO("INPUT1", input_dtype, shape)],
            [
                IO("OUTPUT__0", output0_dtype, shape),
                IO("OUTPUT__1", output1_dtype, shape),
            ],
            version_policy or "{ latest { num_versions: 1 } }",
        )
        swapped = {v: net(*torch_dtypes, swap=True) for v in (2, 3)} if swapped_versions else None
        save(repository, name, net(*torch_dtypes, swap=False), config, swapped)


def identity_models(repository: Path, dtype: object, shape: tuple[int, ...], io_count: int) -> None:
    """`gen_qa_identity_models.create_models` with `--libtorch`: `libtorch_zero_<n>_<dtype>` and
    `libtorch_nobatch_zero_<n>_<dtype>`, `INPUT__i` → `OUTPUT__i` (strings: non-batching only)."""
    net = {1: TextIdentity if is_string(dtype) else Identity1, 3: Identity3}[io_count]
    for max_batch, prefix in ((8, "libtorch"), (0, "libtorch_nobatch")):
        if is_string(dtype) and max_batch:
            continue
        name = zero_model_name(prefix, io_count, dtype)
        inputs = [IO(f"INPUT__{i}", dtype, shape) for i in range(io_count)]
        outputs = [IO(f"OUTPUT__{i}", dtype, shape) for i in range(io_count)]
        save(repository, name, net(), config_text(name, max_batch, inputs, outputs))


# --- the repositories -------------------------------------------------------------------------

# gen_qa_models.py's fixed models (input size 16) that libtorch takes, with their version policies;
# float16 and uint8 are not generated for libtorch, int8_int32_int32 is skipped by L0_infer (a PyTorch
# bug) and so not built here.
FIXED_MODELS: list[tuple[tuple[object, object, object], str | None]] = [
    ((np.int8, np.int8, np.int8), "{ latest { num_versions: 1 } }"),
    ((np.int16, np.int16, np.int16), "{ latest { num_versions: 2 } }"),
    ((np.int32, np.int32, np.int32), "{ all { } }"),
    ((np.int64, np.int64, np.int64), None),
    ((np.float32, np.float32, np.float32), "{ specific { versions: [1, 3] } }"),
    ((np.int32, np.int8, np.int8), None),
    ((np.int32, np.int8, np.int16), None),
    ((np.int32, np.float32, np.float32), None),
    ((np.float32, np.int32, np.int32), None),
    ((STRING, np.int32, np.int32), None),
    ((STRING, STRING, STRING), None),
    ((STRING, np.int32, STRING), None),
    ((STRING, STRING, np.int32), None),
    ((np.int32, STRING, STRING), None),
    ((np.int32, np.int32, STRING), None),
    ((np.int32, STRING, np.int32), None),
]
# The dtypes gen_qa_models.py gives versions 2 and 3 (swapped) for libtorch.
VERSIONED = {np.dtype(d) for d in (np.float32, np.int32, np.int16, np.int8)}

# gen_qa_models.py --variable (the qa_variable_model_repository), under their own prefix: their names
# are the fixed models' in QA, which keeps them in another repository.
VARIABLE_PREFIX = "libtorch_variable"
VARIABLE_MODELS: list[tuple[tuple[object, object, object], tuple[int, ...]]] = [
    ((np.float32, np.float32, np.float32), (-1,)),
    ((np.float32, np.int32, np.int32), (-1, -1)),
    ((np.float32, np.int64, np.int64), (8, -1)),
    ((np.float32, np.int32, np.int64), (-1, 8, -1)),
    ((np.float32, np.float32, np.int32), (-1,)),
    ((np.int32, np.int32, np.int32), (-1, -1)),
    ((np.int32, np.int32, np.float32), (-1, 8, -1)),
    ((STRING, STRING, STRING), (-1,)),
]


def build_qa_repository(repository: Path) -> Path:
    """Every model the ported QA tests use except the model-control ones; returns `repository`."""
    repository.mkdir(parents=True, exist_ok=True)
    for dtypes, policy in FIXED_MODELS:
        versioned = np.dtype(dtypes[0]) in VERSIONED and len({np.dtype(d) for d in dtypes}) == 1
        add_sub_models(repository, "libtorch", dtypes, (16,), policy, swapped_versions=versioned)
    for dtypes, shape in VARIABLE_MODELS:
        add_sub_models(repository, VARIABLE_PREFIX, dtypes, shape)
    # gen_qa_identity_models.py's libtorch models (qa_identity_model_repository).
    identity_models(repository, bool, (-1,), 1)
    identity_models(repository, np.float32, (-1,), 1)
    identity_models(repository, np.float32, (-1,), 3)
    # L0_http's onnx_zero_* models of http_test.py, as libtorch identities.
    identity_models(repository, np.float16, (-1, -1), 1)
    identity_models(repository, STRING, (-1,), 1)
    element = "libtorch_nobatch_zero_1_object_1_element"
    save(
        repository,
        element,
        TextIdentity(),
        config_text(element, 0, [IO("INPUT__0", STRING, (1,))], [IO("OUTPUT__0", STRING, (1,))]),
    )
    queue = "libtorch_zero_1_float32_queue"
    queue_policy = (
        "dynamic_batching { max_queue_delay_microseconds: 1000000 preferred_batch_size: [ 8 ] "
        "default_queue_policy { max_queue_size: 1 } }"
    )
    save(
        repository,
        queue,
        Identity1(),
        config_text(
            queue,
            8,
            [IO("INPUT__0", np.float32, (-1,))],
            [IO("OUTPUT__0", np.float32, (-1,))],
            tail=queue_policy,
        ),
    )
    build_example_models(repository)
    build_input_validation_models(repository)
    return repository


def add_sub_example(repository: Path, name: str, dtype: object) -> None:
    """`simple` (INT32) and `simple_int8`: `INPUT0`/`INPUT1` [16] → sum `OUTPUT0`, difference
    `OUTPUT1`, max batch 8 (the outputs map to the returned tuple in config order, as Triton's
    PyTorch backend does for names without `__<index>`)."""
    inputs = [IO("INPUT0", dtype, (16,)), IO("INPUT1", dtype, (16,))]
    outputs = [IO("OUTPUT0", dtype, (16,)), IO("OUTPUT1", dtype, (16,))]
    torch_dtype = TORCH_DTYPES[np.dtype(dtype)]
    save(
        repository, name, AddSub(torch_dtype, torch_dtype, swap=False), config_text(name, 8, inputs, outputs)
    )


def build_example_models(repository: Path) -> None:
    """What the client examples (src/python/examples of triton-inference-server/client) call."""
    add_sub_example(repository, "simple", np.int32)
    add_sub_example(repository, "simple_int8", np.int8)
    text = [IO(n, STRING, (1, 16), reshape=(16,)) for n in ("INPUT0", "INPUT1")]
    text_out = [IO(n, STRING, (1, 16), reshape=(16,)) for n in ("OUTPUT0", "OUTPUT1")]
    save(
        repository,
        "simple_string",
        TextAddSubText(torch.int64, torch.int64, swap=False),
        config_text("simple_string", 0, text, text_out),
    )
    save(
        repository,
        "simple_identity",
        TextIdentity(),
        config_text(
            "simple_identity",
            0,
            [IO("INPUT0", STRING, (1, -1), reshape=(-1,))],
            [IO("OUTPUT0", STRING, (1, -1), reshape=(-1,))],
        ),
    )
    # Triton's PyTorch backend wants every tensor of a sequence model named `<name>__<forward()
    # position>` (the examples' INPUT and OUTPUT are INPUT__0 and OUTPUT__0 here).
    controls = ", ".join(
        f'{{ name: "{kind}__{index}" control [ {{ kind: CONTROL_SEQUENCE_{kind} '
        "int32_false_true: [ 0, 1 ] } ] }"
        for index, kind in enumerate(("START", "READY"), start=1)
    )
    save(
        repository,
        "simple_sequence",
        Sequence(),
        config_text(
            "simple_sequence",
            8,
            [IO("INPUT__0", np.int32, (1,))],
            [IO("OUTPUT__0", np.int32, (1,))],
            tail=f"sequence_batching {{ control_input [ {controls} ] }}\n"
            + "instance_group [{ kind: KIND_CPU }]",
        ),
    )
    torch.manual_seed(0)
    save(
        repository,
        "inception_libtorch",
        Inception(),
        config_text(
            "inception_libtorch",
            128,
            [IO("input", np.float32, (299, 299, 3))],
            [IO("InceptionV3/Predictions/Softmax", np.float32, (1001,))],
        ),
    )


# A Python-backend model answering `OUTPUT0 = [1.0]` to every request, as QA's input-validation
# models do: Triton's PyTorch backend refuses `optional: true` inputs, the Python backend takes them.
PYTHON_ONE = """\
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        one = np.ones(1, dtype=np.float32)
        return [pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT0", one)]) for _ in requests]
"""


def python_model(repository: Path, name: str, inputs: list[IO], outputs: list[IO]) -> None:
    (repository / name / "1").mkdir(parents=True, exist_ok=True)
    (repository / name / "1" / "model.py").write_text(PYTHON_ONE)
    config = config_text(
        name, 0, inputs, outputs, head='backend: "python"', tail="instance_group [{ kind: KIND_CPU }]"
    )
    (repository / name / "config.pbtxt").write_text(config.strip() + "\n")


def build_input_validation_models(repository: Path) -> None:
    """qa/L0_input_validation's models: `input_all_required` (TorchScript), `input_optional` and
    `input_all_optional` (Python backend, as in QA: optional inputs) and `pt_identity`."""
    required = [IO(f"INPUT{i}", np.float32, (-1,)) for i in range(3)]
    optional = [IO(f"INPUT{i}", np.float32, (-1,), extra=" optional: true") for i in range(3)]
    output = [IO("OUTPUT0", np.float32, (1,))]
    save(repository, "input_all_required", One(), config_text("input_all_required", 0, required, output))
    input3 = IO("INPUT3", np.float32, (-1,), extra=" optional: true")
    python_model(repository, "input_optional", [*required, input3], output)
    python_model(repository, "input_all_optional", optional, output)
    save(
        repository,
        "pt_identity",
        nn.Identity(),
        config_text(
            "pt_identity",
            8,
            [IO("INPUT0", np.float32, (8,))],
            [IO("OUTPUT0", np.float32, (8,))],
            head='backend: "pytorch"',
            tail="dynamic_batching { max_queue_delay_microseconds: 1000000 }",
        ),
    )


def build_control_repository(repository: Path) -> Path:
    """The repository the model-control examples load from and unload (a server of its own)."""
    repository.mkdir(parents=True, exist_ok=True)
    add_sub_example(repository, "simple", np.int32)
    add_sub_example(repository, "simple_int8", np.int8)
    return repository


def index_size(repository: Path) -> int:
    """Rows in Triton's repository index for `repository` with every model loaded: one per version
    its `version_policy` serves (QA's tests count the rows of their own repositories)."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    rows = 0
    for config_path in repository.glob("*/config.pbtxt"):
        config = text_format.Parse(config_path.read_text(), model_config_pb2.ModelConfig())
        versions = sorted(int(p.name) for p in config_path.parent.iterdir() if p.name.isdigit())
        policy = config.version_policy
        if policy.HasField("all"):
            rows += len(versions)
        elif policy.HasField("specific"):
            rows += len(set(versions) & set(policy.specific.versions))
        else:
            rows += min(policy.latest.num_versions or 1, len(versions))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directory", type=Path)
    parser.add_argument("--control", action="store_true", help="the model-control repository instead")
    args = parser.parse_args()
    (build_control_repository if args.control else build_qa_repository)(args.directory)


if __name__ == "__main__":
    main()
