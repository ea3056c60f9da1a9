"""The Serve application: one ingress deployment that embeds the runtime.

The deployment *is* the HTTP and gRPC ingress (proxy → replica in one hop): each
replica owns a runtime (one GPU when Ray assigns one) and serves the Starlette app
built from its dataplane and, over the same dataplane, Triton's gRPC service.
"""

import asyncio
import logging
import os
import stat
from typing import Any

import ray
from ray import serve
from ray.serve import Application
from starlette.types import ASGIApp

from serve_app.config import AppArgs, InvalidArgsError, parse_args
from serve_app.dataplane import DataPlane
from serve_app.grpc_api import GRPCIngress
from serve_app.http_api import build_http_app
from serve_app.metrics import ReplicaMetrics
from serve_app.model_state.actor import ActorHolder, actor_config
from serve_app.model_state.replica import DeploymentModels, OnDemand
from serve_app.placement import Placement
from serve_app.residency.catalog import Catalog
from serve_app.residency.memory import map_large_blocks, memory_meter, size_estimator, trim_heap
from serve_app.residency.types import Budget
from serve_app.runtimes.factory import start_runtime

logger = logging.getLogger(__name__)
# The logger Serve configures in a replica: its log file, and stderr (so `serve run`'s output)
# under RAY_SERVE_LOG_TO_STDERR.
SERVE_LOGGER = "ray.serve"


class ToServeLogger(logging.Handler):
    """Hands serve_app's records to Serve's logger, to be written where the replica's own go."""

    def emit(self, record: logging.LogRecord) -> None:
        logging.getLogger(SERVE_LOGGER).handle(record)


def log_through_serve() -> None:
    """serve_app's loggers (named by module) at Serve's level, through Serve's handlers.

    Serve configures only its own logger; without this the package's INFO records would meet
    the root logger's WARNING level, and its warnings would print without the replica's tag.
    """
    package = logging.getLogger("serve_app")
    package.setLevel(logging.getLogger(SERVE_LOGGER).getEffectiveLevel())
    if not any(isinstance(handler, ToServeLogger) for handler in package.handlers):
        package.addHandler(ToServeLogger())


@serve.deployment(
    name="InferenceServer",
    max_ongoing_requests=64,
    graceful_shutdown_timeout_s=30,
    health_check_period_s=2,
)
@serve.ingress()
class InferenceServer(GRPCIngress):
    """A replica: a runtime serving the model repository over Triton's HTTP and gRPC APIs
    (the gRPC methods, named like the RPCs, come from `GRPCIngress`)."""

    async def __init__(self, args: AppArgs) -> None:
        entered_s = process_age_s()
        log_through_serve()
        self._args = args
        keep_haproxy_directory_private()  # this replica's node
        placement = Placement.detect()
        if not placement.gpu_ids:
            # Ray leaves CUDA_VISIBLE_DEVICES unset for replicas without num_gpus: hide the GPUs
            # it did not assign, from torch and Triton alike.
            os.environ["CUDA_VISIBLE_DEVICES"] = ""
        if args.device == "cpu" and placement.gpu_ids:
            raise InvalidArgsError(
                f"applications[].args.device is 'cpu' but ray_actor_options.num_gpus gave this replica "
                f"GPU {','.join(placement.gpu_ids)}: set device: auto (or cuda) to use it, or remove "
                "num_gpus so the GPU stays free"
            )
        # The deployment's model set, not the repository's whole list: loads and unloads made
        # through any replica before this one started apply here too.
        holder = ActorHolder()
        state = await holder.call("snapshot")
        on_demand = on_demand_placement(args, placement)
        warm = set(args.model_placement.warm)
        wanted = state.load_parameters
        if on_demand is not None:  # a replica starts with its warm set only
            wanted = lambda model: state.load_parameters(model) if model in warm else None  # noqa: E731
        runtime_from_s = process_age_s()
        self._runtime = await start_runtime(args, placement, wanted)
        runtime_s = process_age_s() - runtime_from_s
        context = ray.get_runtime_context()
        self._models = DeploymentModels(
            self._runtime, holder, context.get_actor_name(), context.namespace, on_demand
        )
        await self._models.join(state)
        residency = self._models.residency
        if residency is not None:
            residency.adopt([row.name for row in self._runtime.index() if row.state == "READY"])
        self._metrics: ReplicaMetrics | None = None
        if args.metrics.enabled:
            self._metrics = ReplicaMetrics(
                self._runtime, args.metrics.interval_s, placement.gpu_ids, residency=residency
            )
            self._metrics.start()
        self._dataplane = DataPlane(
            self._runtime,
            self._models,
            model_control=args.model_control,
            placement=placement.as_dict(),
            observer=self._metrics,
            residency=residency,
            catalog=None if residency is None else Catalog(args.model_repository),
        )
        logger.info(
            "replica %s ready: runtime=%s device=%s gpu_ids=%s CUDA_VISIBLE_DEVICES=%s; %.2f s after its "
            "process started (its constructor at %.2f s, the runtime's start %.2f s)",
            placement.replica,
            self._runtime.name,
            self._runtime.device(),
            list(placement.gpu_ids),
            placement.cuda_visible_devices,
            process_age_s(),
            entered_s,
            runtime_s,
        )

    def __serve_build_asgi_app__(self) -> ASGIApp:
        return build_http_app(self._dataplane, self._args.max_request_bytes)

    async def check_health(self) -> None:
        """Serve replaces the replica when this raises."""
        if not self._runtime.healthy():
            raise RuntimeError(f"{self._runtime.name} runtime is not healthy")

    async def __del__(self) -> None:
        """Stop the runtime after Serve drained this replica; a hung stop is cut short."""
        if not hasattr(self, "_runtime"):  # __init__ failed before the runtime started
            return
        if hasattr(self, "_models"):
            await self._models.stop()
        if getattr(self, "_metrics", None) is not None:
            await self._metrics.stop()
        try:
            await asyncio.wait_for(self._runtime.stop(), self._args.stop_timeout_s)
        except asyncio.TimeoutError:  # not the builtin before Python 3.11
            logger.error("runtime stop exceeded %.0f s; exiting anyway", self._args.stop_timeout_s)


def process_age_s() -> float:
    """Seconds since this process started (where a cold start's time goes: Ray's worker start and
    imports before the constructor, the runtime's start in it)."""
    with open("/proc/self/stat") as stat:
        started_ticks = int(stat.read().rsplit(")", 1)[1].split()[19])
    with open("/proc/uptime") as uptime:
        return float(uptime.read().split()[0]) - started_ticks / os.sysconf("SC_CLK_TCK")


def on_demand_placement(args: AppArgs, placement: Placement) -> OnDemand | None:
    """`args.model_placement` for a replica: its budget, and how it estimates and measures model sizes.
    On demand it also has this process map large blocks (`map_large_blocks`): models come and go."""
    options = args.model_placement
    if options.mode != "on_demand":
        return None
    budget = Budget(options.max_models_per_replica, options.memory_budget_bytes, options.idle_unload_s)
    map_large_blocks()
    return OnDemand(budget, size_estimator(args.model_repository), memory_meter(placement.gpu_ids), trim_heap)


# Ray's default for RAY_SERVE_HAPROXY_SOCKET_PATH; Ray puts it in <dir>/<node id>/.
HAPROXY_SOCKET_DEFAULT = "/tmp/haproxy-serve/admin.sock"


def keep_haproxy_directory_private() -> None:
    """Mode 0700 for the directory of HAProxy's admin socket (HAProxy mode only).

    Ray creates it with the umask (0755) and the socket in it world-writable with
    `level admin`; closed, no other local user reaches the socket (or the config, logs and
    metrics socket beside it). Refuses a directory another user owns or a symlink.
    """
    if os.environ.get("RAY_SERVE_ENABLE_HA_PROXY") != "1":
        return
    directory = os.path.dirname(os.environ.get("RAY_SERVE_HAPROXY_SOCKET_PATH", HAPROXY_SOCKET_DEFAULT))
    os.makedirs(directory, mode=0o700, exist_ok=True)
    info = os.lstat(directory)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
        raise RuntimeError(
            f"{directory}, the directory of HAProxy's admin socket, is not a directory of this user "
            f"(uid {os.getuid()}): remove it, or set RAY_SERVE_HAPROXY_SOCKET_PATH in controller_options "
            "to a directory of your own"
        )
    if stat.S_IMODE(info.st_mode) != 0o700:
        os.chmod(directory, 0o700)


def build_app(args: dict[str, Any]) -> Application:
    """Serve application builder (`import_path: serve_app.app:build_app`).

    Takes the raw dict (not `AppArgs`) so a bad arg fails with `parse_args`'s message,
    which names the YAML path, instead of pydantic's default rendering.
    """
    keep_haproxy_directory_private()  # on the node that builds the app, before any replica
    parsed = parse_args(args)
    return InferenceServer.options(deployment_actors=[actor_config(args)]).bind(parsed)
