"""Builds the example TorchScript repository by tracing small nets (no binaries in git).

`python -m serve_app.examples model_repository` writes what `configs/app.yaml`
serves; tests and benchmarks use `write_model` to build repositories of their own.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn


def write_model(
    repository: Path,
    name: str,
    module: nn.Module,
    example_inputs: tuple[torch.Tensor, ...],
    config: str,
    versions: tuple[int, ...] = (1,),
) -> Path:
    """Trace `module` into `<repository>/<name>/<v>/model.pt` and write its config.pbtxt."""
    model_dir = repository / name
    traced = torch.jit.trace(module.eval(), example_inputs)
    for version in versions:
        (model_dir / str(version)).mkdir(parents=True, exist_ok=True)
        traced.save(str(model_dir / str(version) / "model.pt"))
    (model_dir / "config.pbtxt").write_text(config.strip() + "\n")
    return model_dir


class ImageClassifier(nn.Module):
    """Shaped like the Triton PyTorch tutorial's ResNet: [3,224,224] image → 10 logits."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, kernel_size=3, stride=4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()
        )
        self.classifier = nn.Linear(8, 10)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(image))


class ScaleAndSum(nn.Module):
    """Two named inputs (forward-argument naming), two outputs, a variable-length dim."""

    def forward(self, x: torch.Tensor, scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x * scale, x.sum(dim=1, keepdim=True)


class IntOps(nn.Module):
    """No batching, integer input, BOOL and INT64 outputs."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x > 0, torch.cumsum(x, dim=1).to(torch.int64)


def mlp(width: int, depth: int) -> nn.Module:
    """The compute-bound benchmark model: depth x (Linear width→width + ReLU)."""
    layers: list[nn.Module] = []
    for _ in range(depth):
        layers += [nn.Linear(width, width), nn.ReLU()]
    return nn.Sequential(*layers)


def _image_classifier(repository: Path) -> None:
    write_model(
        repository,
        "image_classifier",
        ImageClassifier(),
        (torch.rand(1, 3, 224, 224),),
        """
platform: "pytorch_libtorch"
max_batch_size: 8
input [ { name: "input__0" data_type: TYPE_FP32 dims: [ 3, 224, 224 ] } ]
output [ { name: "output__0" data_type: TYPE_FP32 dims: [ 10 ] } ]
dynamic_batching { }
""",
    )


def _multi_io(repository: Path) -> None:
    write_model(
        repository,
        "multi_io",
        ScaleAndSum(),
        (torch.rand(2, 5), torch.rand(2, 1)),
        """
backend: "pytorch"
max_batch_size: 4
input [
  { name: "x" data_type: TYPE_FP32 dims: [ -1 ] },
  { name: "scale" data_type: TYPE_FP32 dims: [ 1 ] }
]
output [
  { name: "output__0" data_type: TYPE_FP32 dims: [ -1 ] },
  { name: "output__1" data_type: TYPE_FP32 dims: [ 1 ] }
]
dynamic_batching { }
""",
    )


LINEAR_CONFIG = """
platform: "pytorch_libtorch"
max_batch_size: 64
input [ { name: "input__0" data_type: TYPE_FP32 dims: [ 16 ] } ]
output [ { name: "output__0" data_type: TYPE_FP32 dims: [ 4 ] } ]
dynamic_batching { }
"""


def _linear(repository: Path) -> None:
    write_model(repository, "linear", nn.Linear(16, 4), (torch.rand(1, 16),), LINEAR_CONFIG)


class Ballasted(nn.Module):
    """`linear`'s contract with `size_bytes` of weights it carries but barely uses: a model whose
    memory is chosen and whose compute stays tiny (repositories of many models of a given size)."""

    def __init__(self, size_bytes: int) -> None:
        super().__init__()
        self.fc = nn.Linear(16, 4)
        self.ballast = nn.Parameter(torch.rand(max(size_bytes // 4, 1)), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x) + self.ballast[0] * 0.0


def write_sized_linear(repository: Path, name: str, size_bytes: int, seed: int) -> Path:
    """A model of `linear`'s inputs and outputs whose file (and memory once loaded) is about
    `size_bytes`; `seed` makes its outputs its own."""
    torch.manual_seed(seed)
    return write_model(repository, name, Ballasted(size_bytes), (torch.rand(1, 16),), LINEAR_CONFIG)


def _int_ops(repository: Path) -> None:
    write_model(
        repository,
        "int_ops",
        IntOps(),
        (torch.randint(-5, 5, (2, 3), dtype=torch.int32),),
        """
platform: "pytorch_libtorch"
max_batch_size: 0
input [ { name: "INPUT__0" data_type: TYPE_INT32 dims: [ 2, 3 ] } ]
output [
  { name: "OUTPUT__0" data_type: TYPE_BOOL dims: [ 2, 3 ] },
  { name: "OUTPUT__1" data_type: TYPE_INT64 dims: [ 2, 3 ] }
]
""",
    )


EXAMPLES: dict[str, Callable[[Path], None]] = {
    "image_classifier": _image_classifier,
    "multi_io": _multi_io,
    "linear": _linear,
    "int_ops": _int_ops,
}


def build_example_repository(repository: Path) -> None:
    torch.manual_seed(0)
    repository.mkdir(parents=True, exist_ok=True)
    for build in EXAMPLES.values():
        build(repository)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("repository", type=Path, nargs="?", default=Path("model_repository"))
    args = parser.parse_args()
    build_example_repository(args.repository)
    print(f"wrote {', '.join(EXAMPLES)} to {args.repository}")


if __name__ == "__main__":
    main()
