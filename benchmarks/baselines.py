"""Ray Serve contenders the benchmark compares serve_app against.

* `plain_app`: a TorchScript model served the way the Ray Serve docs tutorial
  serves a PyTorch model (https://docs.ray.io/en/latest/serve/tutorials/serve-ml-models.html):
  one HTTP request → `await request.json()` → one forward under `torch.no_grad()`
  → a JSON dict back. Deployment options are the tutorial's: Serve defaults
  (1 replica, num_cpus 1), nothing tuned.
* `noop_app`: a deployment that reads the body and answers `{}` — what the Serve
  request path alone costs (same proxy, same machine).
* `multiplexed_app`: Ray Serve's model multiplexing as its docs show it
  (https://docs.ray.io/en/latest/serve/model-multiplexing.html): a `@serve.multiplexed` loader
  keeping `max_models_per_replica` models per replica (LRU), the model chosen by the
  `serve_multiplexed_model_id` header, which Serve's router uses to prefer replicas holding it;
  the plain deployment's JSON in/out (the placement benchmark, benchmarks.placement).

Used by `serve run` configs that `benchmarks.run` writes (`import_path:
benchmarks.baselines:plain_app`); the repository root must be on PYTHONPATH.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import torch
from ray import serve
from ray.serve import Application
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

logger = logging.getLogger(__name__)


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


class _Multiplexed:
    """The request side of `multiplexed_app`'s deployment; the loader is added by the app, which
    knows `max_num_models_per_replica` (`@serve.multiplexed` takes it when it decorates)."""

    def __init__(self, repository: str) -> None:
        self.repository = Path(repository)
        self.loads = 0
        self.loaded_at: dict[str, float] = {}  # model → when its last load ended (monotonic)
        self.replica = str(os.getpid())

    async def get_model(self, model_id: str) -> Any:
        raise NotImplementedError  # multiplexed_app's subclass

    async def load(self, model_id: str) -> Any:
        """The docs' loader: the model's file loaded in the replica's event loop."""
        started = time.monotonic()
        model = torch.jit.load(str(self.repository / model_id / "1" / "model.pt")).eval()
        self.loads += 1
        self.loaded_at[model_id] = time.monotonic()
        logger.warning("loaded model '%s' in %.2f s", model_id, self.loaded_at[model_id] - started)
        return model

    async def __call__(self, request: Request) -> Response:
        if request.method == "GET":  # readiness probe of the benchmark
            return JSONResponse({"ready": True})
        model_id = serve.get_multiplexed_model_id()
        started = time.monotonic()
        model = await self.get_model(model_id)
        headers = {"bench-replica": self.replica, "bench-model-loads": str(self.loads)}
        if self.loaded_at.get(model_id, 0.0) >= started:  # this request waited for its load
            headers["serve-app-model-load-s"] = f"{time.monotonic() - started:.6f}"
        payload = await request.json()
        with torch.no_grad():
            output = model(torch.tensor(payload["data"], dtype=torch.float32))
        return JSONResponse({"output": output.tolist()}, headers=headers)


def multiplexed_app(args: dict[str, Any]) -> Application:
    """`args`: `repository` (a Triton repository of TorchScript models, version 1) and
    `max_models_per_replica`."""
    room = int(args["max_models_per_replica"])

    class MultiplexedTorch(_Multiplexed):
        @serve.multiplexed(max_num_models_per_replica=room)
        async def get_model(self, model_id: str) -> Any:
            return await self.load(model_id)

    return serve.deployment(MultiplexedTorch).bind(args["repository"])
