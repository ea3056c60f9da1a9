"""Runtime selection: `torch`, `triton`, or `auto` (Triton when it imports and starts).

Each runtime builds itself from the app's args (`create`); this module only chooses, and falls
back from Triton to torch under `auto`.
"""

from __future__ import annotations

import logging

from serve_app.config import AppArgs
from serve_app.placement import Placement
from serve_app.runtimes.base import Runtime, Wanted, everything
from serve_app.storage import StorageError

logger = logging.getLogger(__name__)


async def start_runtime(args: AppArgs, placement: Placement, wanted: Wanted = everything) -> Runtime:
    """Create the runtime the args ask for, started with the `wanted` models of the repository."""
    if args.runtime != "torch":
        try:
            return await _start_triton(args, placement, wanted)
        except StorageError:  # the torch runtime could not read the store either
            raise
        except Exception as exc:
            if args.runtime == "triton":
                raise
            logger.warning("runtime auto: Triton unavailable (%s); using the torch runtime", exc)
    from serve_app.runtimes.torch.runtime import TorchRuntime  # imports torch: only when it runs

    return await TorchRuntime.create(args, placement, wanted)


async def _start_triton(args: AppArgs, placement: Placement, wanted: Wanted) -> Runtime:
    from serve_app.runtimes.triton.runtime import TritonRuntime

    runtime = await TritonRuntime.create(args, placement, wanted)
    logger.info("runtime %s: using in-process Triton", args.runtime)
    return runtime
