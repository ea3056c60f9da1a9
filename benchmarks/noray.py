"""serve_app's own HTTP app and torch runtime under plain uvicorn, without Ray.

`python -m benchmarks.noray REPOSITORY PORT [--threads 2]` — the ceiling of our
code path (Starlette routes, codecs, dynamic batcher, TorchScript) with no Serve
hop; the gap to the Serve modes is what the request path costs.
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

import torch
import uvicorn

from serve_app.dataplane import DataPlane
from serve_app.http_api import build_http_app
from serve_app.model_state.replica import DeploymentModels
from serve_app.runtimes.torch.runtime import TorchRuntime


async def serve(repository: Path, port: int, threads: int) -> None:
    runtime = TorchRuntime(repository, torch.device("cpu"), threads)
    await runtime.start()
    dataplane = DataPlane(
        runtime, DeploymentModels.in_process(runtime), model_control=False, placement={"replica": "noray"}
    )
    app = build_http_app(dataplane, 64 * 2**20)
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)
    try:
        await uvicorn.Server(config).serve()
    finally:
        await runtime.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("repository", type=Path)
    parser.add_argument("port", type=int)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    asyncio.run(serve(args.repository, args.port, args.threads))


if __name__ == "__main__":
    main()
