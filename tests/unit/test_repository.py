"""Repository parsing (repository.py) and the torch runtime's admission of entries (admission.py):
discovery, config.pbtxt validation, version policy and the /config rendering."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from serve_app.repository import ModelEntryError, ModelSignature, TensorSpec, message_to_dict
from serve_app.runtimes.torch.admission import DynamicBatching, discover, load_model_spec

TENSORS = """
input [ { name: "input__0" data_type: TYPE_FP32 dims: [ 4 ] } ]
output [ { name: "output__0" data_type: TYPE_FP32 dims: [ 2 ] } ]
"""
VALID = 'platform: "pytorch_libtorch"\nmax_batch_size: 8\n' + TENSORS


def write_entry(
    repository: Path,
    name: str,
    config: str | None = VALID,
    versions: tuple[int, ...] = (1,),
    filename: str = "model.pt",
) -> Path:
    """A model directory whose model files are placeholders (parsing never opens them)."""
    model_dir = repository / name
    model_dir.mkdir(parents=True)
    if config is not None:
        (model_dir / "config.pbtxt").write_text(config)
    for version in versions:
        (model_dir / str(version)).mkdir()
        (model_dir / str(version) / filename).write_bytes(b"placeholder")
    return model_dir


def entry_error(tmp_path: Path, config: str | None, **kwargs: object) -> str:
    model_dir = write_entry(tmp_path, "m", config, **kwargs)  # type: ignore[arg-type]
    with pytest.raises(ModelEntryError) as info:
        load_model_spec(model_dir)
    return str(info.value)


def test_discovers_the_examples_sorted_and_valid(example_repository: Path) -> None:
    entries = discover(example_repository)
    assert [e.name for e in entries] == ["image_classifier", "int_ops", "linear", "multi_io"]
    assert all(e.spec is not None and e.error is None for e in entries)
    image = entries[0].spec
    assert image is not None
    assert image.max_batch_size == 8
    assert image.versions == (1,)
    assert image.dynamic_batching == DynamicBatching(max_queue_delay_us=0, preferred_batch_sizes=())
    assert image.model_file(1) == example_repository / "image_classifier" / "1" / "model.pt"
    assert image.signature() == ModelSignature(
        name="image_classifier",
        max_batch_size=8,
        inputs=(TensorSpec("input__0", "FP32", (3, 224, 224)),),
        outputs=(TensorSpec("output__0", "FP32", (10,)),),
    )


def test_backend_pytorch_is_given_the_platform_triton_reports(example_repository: Path) -> None:
    spec = load_model_spec(example_repository / "multi_io")
    assert spec.config.backend == "pytorch"
    assert spec.config.platform == "pytorch_libtorch"


def test_config_dict_has_triton_defaults_and_json_types(example_repository: Path) -> None:
    config = load_model_spec(example_repository / "int_ops").config_dict()
    assert config["name"] == "int_ops"
    assert config["default_model_filename"] == "model.pt"
    assert config["version_policy"] == {"latest": {"num_versions": 1}}
    assert config["input"] == [{"name": "INPUT__0", "data_type": "TYPE_INT32", "dims": [2, 3]}]
    assert [o["data_type"] for o in config["output"]] == ["TYPE_BOOL", "TYPE_INT64"]
    assert orjson.loads(orjson.dumps(config)) == config


def test_tensor_metadata_shows_the_batch_dimension_as_minus_one(example_repository: Path) -> None:
    batched = load_model_spec(example_repository / "multi_io").signature()
    assert [batched.tensor_metadata(t) for t in batched.inputs] == [
        {"name": "x", "datatype": "FP32", "shape": [-1, -1]},
        {"name": "scale", "datatype": "FP32", "shape": [-1, 1]},
    ]
    unbatched = load_model_spec(example_repository / "int_ops").signature()
    assert unbatched.tensor_metadata(unbatched.inputs[0])["shape"] == [2, 3]


def test_name_in_config_equal_to_the_directory_is_accepted(tmp_path: Path) -> None:
    spec = load_model_spec(write_entry(tmp_path, "m", 'name: "m"\n' + VALID))
    assert spec.name == "m"


@pytest.mark.parametrize(
    ("config", "reason"),
    [
        ('platform: "pytorch_libtorch" max_batch_size: [ 1', "cannot parse"),
        ('platform: "pytorch_libtorch" no_such_field: 1' + TENSORS, "cannot parse"),
        ('name: "other"\n' + VALID, "names the model 'other' but its directory is 'm'"),
        (
            'platform: "onnxruntime_onnx"\nmax_batch_size: 8\n' + TENSORS,
            "'onnxruntime_onnx' is not TorchScript, the only kind the torch runtime executes; "
            "runtime: triton serves it",
        ),
        ('backend: "python"\nmax_batch_size: 8\n' + TENSORS, "'python' is not TorchScript"),
        ('platform: "ensemble"\nmax_batch_size: 8\n' + TENSORS, "'ensemble' is not TorchScript"),
        ("max_batch_size: 8\n" + TENSORS, "'none' is not TorchScript"),
        (
            VALID + "sequence_batching { }",
            "sequence_batching: not supported by the torch runtime; runtime: triton serves it",
        ),
        (
            VALID + 'batch_input [ { kind: BATCH_ELEMENT_COUNT target_name: "n" data_type: TYPE_FP32 } ]',
            "batch_input: not supported by the torch runtime",
        ),
        (VALID + "dynamic_batching { priority_levels: 2 }", "dynamic_batching.priority_levels: not"),
        (
            VALID + "dynamic_batching { default_queue_policy { max_queue_size: 4 } }",
            "dynamic_batching.default_queue_policy: not supported",
        ),
        (
            VALID.replace("dims: [ 4 ]", "dims: [ 4 ] reshape { shape: [ 3 ] }"),
            "input 'input__0' has different size for dims [4] and reshape [3]",
        ),
        (
            VALID.replace("dims: [ 2 ]", "dims: [ 2, -1 ] reshape { shape: [ -1, 2 ] }"),
            "output 'output__0' has different size for dims [2, -1] and reshape [-1, 2]",
        ),
        (
            VALID.replace("dims: [ 4 ]", "dims: [ -1 ] reshape { shape: [ 2, 2 ] }"),
            "has different size for dims [-1] and reshape [2, 2]",
        ),
        (VALID.replace("dims: [ 4 ]", "dims: [ 4 ] reshape { shape: [ 4, 0 ] }"), "reshape [4, 0]"),
        ('platform: "pytorch_libtorch"\nmax_batch_size: -1\n' + TENSORS, "max_batch_size must be >= 0"),
        (VALID.replace("dims: [ 4 ]", "dims: [ 0 ]"), "input 'input__0' has invalid dims [0]"),
        (VALID.replace("dims: [ 4 ]", "dims: [ -2 ]"), "input 'input__0' has invalid dims [-2]"),
        (
            VALID.replace("dims: [ 2 ]", "dims: [ ]").replace("max_batch_size: 8", "max_batch_size: 0"),
            "output 'output__0' has invalid dims []",
        ),
        (
            VALID.replace("TYPE_FP32 dims: [ 4 ]", "TYPE_STRING dims: [ 4 ]"),
            "Triton only supports 1 dimensional List of String as input for 'input__0'",
        ),
        (
            VALID + "\ndynamic_batching { preferred_batch_size: [ 4, 16 ] }",
            "preferred_batch_size [16] exceeds max_batch_size 8",
        ),
        (VALID.replace("TYPE_FP32 dims: [ 2 ]", "TYPE_BF16 dims: [ 2 ]"), "unsupported datatype BF16"),
        (VALID.replace("data_type: TYPE_FP32 dims: [ 4 ]", "dims: [ 4 ]"), "unsupported datatype INVALID"),
        (
            'platform: "pytorch_libtorch"\nmax_batch_size: 8\n'
            'output [ { name: "output__0" data_type: TYPE_FP32 dims: [ 2 ] } ]',
            "declares no input",
        ),
    ],
)
def test_broken_config_is_refused_with_its_reason(tmp_path: Path, config: str, reason: str) -> None:
    assert reason in entry_error(tmp_path, config)


def test_missing_config_is_refused(tmp_path: Path) -> None:
    assert "config.pbtxt does not exist" in entry_error(tmp_path, None)


def test_unreadable_config_is_an_entry_error_not_a_crash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_entry(tmp_path, "a_good")
    write_entry(tmp_path, "b_unreadable")
    read_text = Path.read_text

    def deny(path: Path, *args: object, **kwargs: object) -> str:
        if path.parent.name == "b_unreadable":
            raise PermissionError(13, "Permission denied", str(path))
        return read_text(path, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Path, "read_text", deny)
    entries = {e.name: e for e in discover(tmp_path)}
    assert entries["a_good"].spec is not None
    assert entries["b_unreadable"].error is not None and "Permission denied" in entries["b_unreadable"].error


def test_missing_model_file_is_refused(tmp_path: Path) -> None:
    assert "1/model.pt does not exist" in entry_error(tmp_path, VALID, filename="other.pt")


def test_model_without_version_directory_is_refused(tmp_path: Path) -> None:
    assert "no version directory" in entry_error(tmp_path, VALID, versions=())


def test_discover_keeps_broken_entries_as_errors_and_the_rest_serving(tmp_path: Path) -> None:
    write_entry(tmp_path, "a_good")
    write_entry(tmp_path, "b_unparsable", "platform: [")
    write_entry(tmp_path, "c_no_config", None)
    write_entry(tmp_path, "d_no_file", VALID, filename="x.pt")
    write_entry(tmp_path, "e_onnx", VALID.replace("pytorch_libtorch", "onnxruntime_onnx"))
    write_entry(tmp_path, ".hidden", "garbage")
    (tmp_path / "README.md").write_text("not a model")
    entries = {e.name: e for e in discover(tmp_path)}
    assert sorted(entries) == ["a_good", "b_unparsable", "c_no_config", "d_no_file", "e_onnx"]
    assert entries["a_good"].spec is not None and entries["a_good"].error is None
    for name in ("b_unparsable", "c_no_config", "d_no_file", "e_onnx"):
        assert entries[name].spec is None and entries[name].error


@pytest.mark.parametrize(
    ("policy", "versions"),
    [
        ("", (3,)),
        ("version_policy: { latest: { num_versions: 1 } }", (3,)),
        ("version_policy: { latest: { num_versions: 2 } }", (2, 3)),
        ("version_policy: { latest: { num_versions: 9 } }", (1, 2, 3)),
        ("version_policy: { all: { } }", (1, 2, 3)),
        ("version_policy: { specific: { versions: [ 3, 1 ] } }", (1, 3)),
    ],
)
def test_version_policy_selects_versions(tmp_path: Path, policy: str, versions: tuple[int, ...]) -> None:
    model_dir = write_entry(tmp_path, "m", VALID + policy, versions=(1, 2, 3))
    (model_dir / "notes").mkdir()  # not version directories
    (model_dir / "²").mkdir()
    assert load_model_spec(model_dir).versions == versions


def test_version_directories_triton_ignores_are_ignored(tmp_path: Path) -> None:
    ignored = ("0", "01", "007", "+4", " 5", "٣")  # begin with 0, or not plain ASCII numbers
    served = write_entry(tmp_path, "served", VALID + "version_policy: { all: { } }", versions=(3,))
    only_ignored = write_entry(tmp_path, "only_ignored", VALID, versions=())
    for model_dir in (served, only_ignored):
        for name in ignored:
            (model_dir / name).mkdir()
            (model_dir / name / "model.pt").write_bytes(b"placeholder")
    assert load_model_spec(served).versions == (3,)
    with pytest.raises(ModelEntryError, match="no version directory"):
        load_model_spec(only_ignored)


@pytest.mark.parametrize(
    ("dims", "reshape"),
    [
        ("[ 1 ]", "[ ]"),
        ("[ 2, 3 ]", "[ 6 ]"),
        ("[ 2, 4, -1, 6 ]", "[ 8, -1, 1, 6 ]"),
        ("[ -1 ]", "[ -1, 1 ]"),
    ],
)
def test_reshapes_triton_accepts_are_accepted(tmp_path: Path, dims: str, reshape: str) -> None:
    config = VALID.replace("dims: [ 4 ]", f"dims: {dims} reshape {{ shape: {reshape} }}")
    spec = load_model_spec(write_entry(tmp_path, "m", config))
    assert spec.config.input[0].HasField("reshape")


@pytest.mark.parametrize(
    ("groups", "instances"),
    [
        ("", 1),
        ("instance_group [ { count: 3 kind: KIND_CPU } ]", 3),
        ("instance_group [ { count: 2 kind: KIND_CPU }, { kind: KIND_GPU }, { count: 2 } ]", 5),
        ("instance_group [ { count: 4 kind: KIND_MODEL } ]", 1),
    ],
)
def test_instances_count_the_instance_groups(tmp_path: Path, groups: str, instances: int) -> None:
    assert load_model_spec(write_entry(tmp_path, "m", VALID + groups)).instances == instances


def test_version_dirs_sort_numerically(tmp_path: Path) -> None:
    spec = load_model_spec(write_entry(tmp_path, "m", VALID, versions=(2, 10)))
    assert spec.versions == (10,)


def test_default_policy_is_written_into_the_config(tmp_path: Path) -> None:
    spec = load_model_spec(write_entry(tmp_path, "m", VALID, versions=(1, 2)))
    assert spec.config_dict()["version_policy"] == {"latest": {"num_versions": 1}}


def test_specific_policy_naming_a_missing_version_is_refused(tmp_path: Path) -> None:
    error = entry_error(tmp_path, VALID + "version_policy: { specific: { versions: [ 1, 4 ] } }")
    assert "versions [4] that have no directory" in error


def test_only_the_selected_versions_need_a_model_file(tmp_path: Path) -> None:
    model_dir = write_entry(tmp_path, "m", VALID, versions=(1, 2))
    (model_dir / "1" / "model.pt").unlink()
    assert load_model_spec(model_dir).versions == (2,)
    (model_dir / "config.pbtxt").write_text(VALID + "version_policy: { all: { } }")
    with pytest.raises(ModelEntryError, match=r"1/model\.pt does not exist"):
        load_model_spec(model_dir)


def test_default_model_filename_names_the_model_file(tmp_path: Path) -> None:
    config = VALID + 'default_model_filename: "weights.pt"'
    spec = load_model_spec(write_entry(tmp_path, "m", config, filename="weights.pt"))
    assert spec.model_file(1) == tmp_path / "m" / "1" / "weights.pt"
    assert spec.config_dict()["default_model_filename"] == "weights.pt"
    assert "weights.pt does not exist" in entry_error(tmp_path / "other", config)


def test_dynamic_batching_settings(tmp_path: Path) -> None:
    config = VALID + "dynamic_batching { max_queue_delay_microseconds: 500 preferred_batch_size: [ 4, 2 ] }"
    spec = load_model_spec(write_entry(tmp_path, "m", config))
    assert spec.dynamic_batching == DynamicBatching(max_queue_delay_us=500, preferred_batch_sizes=(2, 4))
    assert load_model_spec(write_entry(tmp_path, "n")).dynamic_batching is None


def _parse(text: str) -> model_config_pb2.ModelConfig:
    return text_format.Parse(text, model_config_pb2.ModelConfig())


def test_message_to_dict_keeps_int64_as_numbers_and_enums_as_names() -> None:
    config = _parse(
        'name: "m" max_batch_size: 4 '
        'input [ { name: "x" data_type: TYPE_INT64 format: FORMAT_NCHW dims: [ -1, 3 ] } ] '
        "instance_group [ { kind: KIND_CPU count: 2 } ] "
        "dynamic_batching { max_queue_delay_microseconds: 100 "
        "default_queue_policy { timeout_action: DELAY } }"
    )
    assert message_to_dict(config) == {
        "name": "m",
        "max_batch_size": 4,
        "input": [{"name": "x", "data_type": "TYPE_INT64", "format": "FORMAT_NCHW", "dims": [-1, 3]}],
        "instance_group": [{"kind": "KIND_CPU", "count": 2}],
        "dynamic_batching": {
            "max_queue_delay_microseconds": 100,
            "default_queue_policy": {"timeout_action": "DELAY"},
        },
    }


def test_message_to_dict_renders_maps_as_json_objects() -> None:
    config = _parse(
        'name: "m" parameters { key: "k" value { string_value: "v" } } '
        "dynamic_batching { priority_levels: 2 priority_queue_policy { key: 1 value { max_queue_size: 3 } } }"
    )
    rendered = message_to_dict(config)
    assert rendered["parameters"] == {"k": {"string_value": "v"}}
    assert rendered["dynamic_batching"]["priority_queue_policy"] == {"1": {"max_queue_size": 3}}
    assert orjson.loads(orjson.dumps(rendered)) == rendered


def test_signature_from_config_dict_round_trips(example_repository: Path) -> None:
    spec = load_model_spec(example_repository / "multi_io")
    signature = ModelSignature.from_config(orjson.loads(orjson.dumps(spec.config_dict())))
    assert signature == spec.signature()
    assert signature.inputs == (TensorSpec("x", "FP32", (-1,)), TensorSpec("scale", "FP32", (1,)))
