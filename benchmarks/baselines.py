"""Ray Serve contenders the benchmark compares serve_app against.

* `plain_app`: a TorchScript model served the way the Ray Serve docs tutorial
  serves a PyTorch model (https://docs.ray.io/en/latest/serve/tutorials/serve-ml-models.html):
  one HTTP request → `await request.json()` → one forward under `torch.no_grad()`
  → a JSON dict back. Deployment options are the tutorial's: Serve defaults
  (1 replica, num_cpus 1), nothing tuned.
* `noop_app`: a deployment that reads the body and answers `{}` — what the Serve
  request path alone costs (same proxy, same machine).

Used by `serve run` configs that `benchmarks.run` writes (`import_path:
benchmarks.baselines:plain_app`); the repository root must be on PYTHONPATH.
"""

from __future__ import annotations

from typing import Any

import torch
from ray import serve
from ray.serve import Application
from starlette.requests import Request
from starlette.responses import Response


@serve.deployment
class PlainTorch:
    """The tutorial's deployment: JSON in, one forward per request, JSON out.

    One deployment holds the benchmark's models, chosen by the last path segment
    (`POST /plain/mlp4096`), so a single `serve run` serves all of them; each
    request still runs exactly one forward of one model, as in the tutorial.
    """

    def __init__(self, model_paths: dict[str, str]) -> None:
        self.models = {name: torch.jit.load(path).eval() for name, path in model_paths.items()}

    async def __call__(self, request: Request) -> Any:
        if request.method == "GET":  # readiness probe of the benchmark
            return {"ready": True}
        model = self.models[request.url.path.rstrip("/").rsplit("/", 1)[-1]]
        payload = await request.json()
        tensor = torch.tensor(payload["data"], dtype=torch.float32)
        with torch.no_grad():
            output = model(tensor)
        return {"output": output.tolist()}


@serve.deployment
class Noop:
    """Reads the request and answers `{}`: the request path's own cost."""

    async def __call__(self, request: Request) -> Response:
        await request.body()
        return Response(b"{}", media_type="application/json")


def plain_app(args: dict[str, Any]) -> Application:
    return PlainTorch.bind(args["model_paths"])


def noop_app(args: dict[str, Any]) -> Application:
    return Noop.bind()
