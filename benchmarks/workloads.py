"""The benchmark's models and request bodies.

Models (TorchScript, traced by serve_app.examples.write_model into a temp repository):
* `mlp4096`: 4 x (Linear 4096→4096 + ReLU), FP32, max_batch_size 64, dynamic_batching {} —
  compute-bound; batching is what makes it fast.
* `mlp1024`: the same at width 1024 — lighter; the request path's per-request cost dominates.
* `tiny`: Linear(16, 4) — latency of the path itself.
* `blob4m`: identity over 1,048,576 FP32 (4 MiB) — tensor transport (binary vs JSON).
* `resnet50`: ResNet-50's layers (random weights), a flat FP32 3x224x224 image in, 1000 scores
  out, max_batch_size 64 — the GPU rows' heavy model (benchmarks.gpu).

`build_repository(..., gpu=True)` gives every model a KIND_GPU instance group (the GPU rows).
`sized_repository` writes many models of `linear`'s contract whose files (and memory) have chosen
sizes (the placement benchmark, benchmarks.placement).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from benchmarks.loadgen import MODEL_VERSION, Request
from serve_app.examples import mlp, write_model, write_sized_linear


@dataclass(frozen=True)
class Model:
    name: str
    width: int  # input features (per sample)
    max_batch_size: int
    description: str

    @property
    def sample_bytes(self) -> int:
        return self.width * 4


MODELS = {
    m.name: m
    for m in (
        Model("mlp4096", 4096, 64, "4x(Linear 4096→4096+ReLU) FP32, compute-bound"),
        Model("mlp1024", 1024, 64, "4x(Linear 1024→1024+ReLU) FP32, lighter"),
        Model("tiny", 16, 64, "Linear(16→4) FP32, latency"),
        Model("blob4m", 1 << 20, 4, "identity over 4 MiB FP32, transport"),
        Model("resnet50", 3 * 224 * 224, 64, "ResNet-50-sized CNN FP32 (GPU rows)"),
    )
}


class _Identity(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class _Bottleneck(nn.Module):
    def __init__(self, inputs: int, width: int, stride: int) -> None:
        super().__init__()
        outputs = width * 4
        self.body = nn.Sequential(
            nn.Conv2d(inputs, width, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, width, 3, stride, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, outputs, 1, bias=False), nn.BatchNorm2d(outputs),
        )  # fmt: skip
        self.shortcut = (
            nn.Identity()
            if stride == 1 and inputs == outputs
            else nn.Sequential(nn.Conv2d(inputs, outputs, 1, stride, bias=False), nn.BatchNorm2d(outputs))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + self.shortcut(x))


class _ResNet50(nn.Module):
    """ResNet-50's layer shapes (torchvision's resnet50, 25.6 M parameters) over a flat input."""

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = [
            nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(3, 2, 1),
        ]  # fmt: skip
        inputs = 64
        for width, blocks, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
            for block in range(blocks):
                layers.append(_Bottleneck(inputs, width, stride if block == 0 else 1))
                inputs = width * 4
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(inputs, 1000)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.features(x.reshape(-1, 3, 224, 224))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(features, 1), 1))


def _config(model: Model, out_width: int, batching: bool, gpu: bool) -> str:
    return f"""
platform: "pytorch_libtorch"
max_batch_size: {model.max_batch_size}
input [ {{ name: "input__0" data_type: TYPE_FP32 dims: [ {model.width} ] }} ]
output [ {{ name: "output__0" data_type: TYPE_FP32 dims: [ {out_width} ] }} ]
{"dynamic_batching { }" if batching else ""}
{"instance_group [ { kind: KIND_GPU count: 1 } ]" if gpu else ""}
"""


def build_repository(path: Path, names: list[str], gpu: bool = False) -> Path:
    """A Triton model repository holding the named benchmark models (`gpu`: on KIND_GPU)."""
    torch.manual_seed(0)
    path.mkdir(parents=True, exist_ok=True)
    for name in names:
        model = MODELS[name]
        if name.startswith("mlp"):
            module, out, batching = mlp(model.width, 4), model.width, True
        elif name == "tiny":
            module, out, batching = nn.Linear(16, 4), 4, True
        elif name == "resnet50":
            module, out, batching = _ResNet50(), 1000, True
        else:
            module, out, batching = _Identity(), model.width, False
        write_model(path, name, module, (torch.rand(1, model.width),), _config(model, out, batching, gpu))
    return path


# The contract of `sized_repository`'s models (serve_app.examples.write_sized_linear): [16] FP32 in.
SIZED = Model("sized", 16, 64, "Linear(16→4) FP32 with ballast weights of a chosen size")


def sized_names(count: int) -> list[str]:
    return [f"m{i:03d}" for i in range(count)]


def sized_repository(path: Path, count: int, low_bytes: int, high_bytes: int) -> dict[str, int]:
    """`count` models (`sized_names`) of sizes spread evenly from `low_bytes` to `high_bytes` (in
    name order), each with its own seed, under `path`/repository; written once: a later call with
    the same arguments finds them (sizes.json beside the repository says what was written).
    Returns model → file bytes."""
    record = path / "sizes.json"
    spec = {"count": count, "low_bytes": low_bytes, "high_bytes": high_bytes}
    if record.is_file() and json.loads(record.read_text()).get("spec") == spec:
        return json.loads(record.read_text())["sizes"]
    step = (high_bytes - low_bytes) / max(count - 1, 1)
    wanted = {name: round(low_bytes + i * step) for i, name in enumerate(sized_names(count))}
    for seed, (name, size) in enumerate(wanted.items()):
        write_sized_linear(path / "repository", name, size, seed)
    sizes = {name: model_file(path / "repository", name).stat().st_size for name in wanted}
    record.write_text(json.dumps({"spec": spec, "sizes": sizes}))
    return sizes


def model_file(repository: Path, name: str) -> Path:
    return repository / name / MODEL_VERSION / "model.pt"


def sample(model: Model, batch: int = 1, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((batch, model.width), dtype=np.float32)


def kserve_binary(model: Model, batch: int = 1) -> Request:
    """Triton binary tensor extension: JSON header + raw FP32, binary output requested."""
    data = sample(model, batch).tobytes()
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "input__0",
                    "shape": [batch, model.width],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": len(data)},
                }
            ],
            "outputs": [{"name": "output__0", "parameters": {"binary_data": True}}],
        },
        separators=(",", ":"),
    ).encode()
    return Request(
        f"/v2/models/{model.name}/infer",
        header + data,
        {"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(len(header))},
    )


def kserve_json(model: Model, batch: int = 1) -> Request:
    values = sample(model, batch).reshape(-1).tolist()
    body = json.dumps(
        {
            "inputs": [
                {"name": "input__0", "shape": [batch, model.width], "datatype": "FP32", "data": values}
            ],
        },
        separators=(",", ":"),
    ).encode()
    return Request(f"/v2/models/{model.name}/infer", body, {"Content-Type": "application/json"})


def plain_json(model: Model, route: str, batch: int = 1) -> Request:
    """The tutorial deployment's body: {"data": [[...]]}."""
    body = json.dumps({"data": sample(model, batch).tolist()}, separators=(",", ":")).encode()
    return Request(route, body, {"Content-Type": "application/json"})


def noop_request(route: str = "/") -> Request:
    return Request(route, b'{"data":[0]}', {"Content-Type": "application/json"})
