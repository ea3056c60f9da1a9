"""Runtime selection: `torch`, `triton`, or `auto` (Triton when it imports and starts)."""

from __future__ import annotations

import logging

from serve_app.config import AppArgs
from serve_app.placement import Placement
from serve_app.runtimes.base import Runtime
from serve_app.storage import RepositoryMirror, RepositoryURL, StorageError

logger = logging.getLogger(__name__)


async def start_runtime(args: AppArgs, placement: Placement) -> Runtime:
    """Create and start the runtime the args ask for."""
    if args.runtime != "torch":
        try:
            return await _start_triton(args, placement)
        except StorageError:  # the torch runtime could not read the store either
            raise
        except Exception as exc:
            if args.runtime == "triton":
                raise
            logger.warning("runtime auto: Triton unavailable (%s); using the torch runtime", exc)
    from serve_app.runtimes.torch import TorchRuntime  # imports torch (~1 s): only when it runs

    repository, fetch = args.model_repository, None
    if isinstance(repository, RepositoryURL):
        mirror = RepositoryMirror(repository)
        await mirror.fetch()
        repository, fetch = mirror.root, mirror.fetch
    runtime = TorchRuntime(
        repository,
        placement.torch_device(args.device),
        args.torch_threads or placement.threads(),
        args.execution_timeout_s,
        fetch=fetch,
    )
    await runtime.start()
    return runtime


async def _start_triton(args: AppArgs, placement: Placement) -> Runtime:
    from serve_app.runtimes.triton import TritonRuntime

    runtime = TritonRuntime(args, placement)
    await runtime.start()
    logger.info("runtime %s: using in-process Triton", args.runtime)
    return runtime
