"""The servers the ported QA tests run against, from the same test code: standalone Triton 2.51
(the `tritonserver` binary with Triton's PyTorch and Python backends) and serve_app on each runtime.

Each target serves two endpoints, as QA starts two servers: `main` (the QA repository, model
control off: Triton's `--model-control-mode=none`, serve_app's `model_control: false`) and
`control` (the model-control examples' repository, Triton's explicit mode, serve_app's
`model_control: true`). serve_app serves both from one `serve run` as two applications, `triton`
at `/` and `control` at `/control`; with two applications Serve routes gRPC by the `application`
metadata, which `Endpoint`'s gRPC clients add to every call (Triton ignores it).
"""

from __future__ import annotations

import contextlib
import copy
import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as grpcaio
import tritonclient.http as httpclient
import tritonclient.http.aio as httpaio

from benchmarks import standalone
from benchmarks.servers import isolation_env
from devtools.processes import http_get
from serve_app import triton_layout
from tests.e2e.serve_run import RUNTIMES, ServeRun, app_config, fixed_replicas

STANDALONE = "standalone"
TORCH = "torch"
# serve_app's runtimes, and standalone Triton where its binary and backends are installed.
TARGETS = [*([STANDALONE] if standalone.unavailable() is None else []), *RUNTIMES]
CONTROL_PREFIX = "/control"
DIRECT_INGRESS = "RAY_SERVE_DIRECT_INGRESS_"


class Headers(grpcclient.InferenceServerClientPlugin):
    """Fixed metadata on every call of a tritonclient gRPC client (sync, streaming and aio)."""

    def __init__(self, headers: dict[str, str]) -> None:
        self.headers = headers

    def __call__(self, request: Any) -> None:
        request.headers.update(self.headers)


@dataclass(frozen=True)
class Endpoint:
    """One server as tritonclient sees it: `http` is tritonclient.http's url (host:port[/path])."""

    http: str
    grpc: str
    grpc_headers: dict[str, str] = field(default_factory=dict)

    @property
    def base_url(self) -> str:
        return f"http://{self.http}"

    @property
    def grpc_metadata(self) -> tuple[tuple[str, str], ...]:
        """The routing metadata for a raw `service_pb2_grpc` stub call."""
        return tuple(self.grpc_headers.items())

    def http_client(self, **options: Any) -> httpclient.InferenceServerClient:
        return httpclient.InferenceServerClient(self.http, **options)

    def http_aio_client(self, **options: Any) -> httpaio.InferenceServerClient:
        return httpaio.InferenceServerClient(self.http, **options)

    def grpc_client(self, **options: Any) -> grpcclient.InferenceServerClient:
        client = grpcclient.InferenceServerClient(self.grpc, **options)
        if self.grpc_headers:
            client.register_plugin(Headers(self.grpc_headers))
        return client

    def grpc_aio_client(self, **options: Any) -> grpcaio.InferenceServerClient:
        client = grpcaio.InferenceServerClient(self.grpc, **options)
        if self.grpc_headers:
            client.register_plugin(Headers(self.grpc_headers))
        return client


@dataclass(frozen=True)
class Target:
    name: str
    main: Endpoint
    control: Endpoint
    repository: Path
    control_repository: Path


_TRITON_SERVES_IT = "runtime: triton serves it"
# The QA models `runtime: torch` does not execute, by design (docs/repository.md), and the reason
# each is UNAVAILABLE with: what the QA tests of them expect there instead of Triton's answers.
TORCH_UNAVAILABLE = {
    "simple_sequence": f"sequence_batching: not supported by the torch runtime; {_TRITON_SERVES_IT}",
    "libtorch_zero_1_float32_queue": (
        f"dynamic_batching.default_queue_policy: not supported by the torch runtime; {_TRITON_SERVES_IT}"
    ),
    **{
        name: (
            "platform/backend 'python' is not TorchScript, the only kind the torch runtime executes; "
            + _TRITON_SERVES_IT
        )
        for name in ("input_optional", "input_all_optional")
    },
}


def unavailable(model: str) -> str:
    """The text of `runtime: torch`'s UNAVAILABLE answer for a model of TORCH_UNAVAILABLE."""
    return f"model '{model}' is not ready: {TORCH_UNAVAILABLE[model]}"


def by_design(target: Target, model: str | None) -> bool:
    """Whether `target` refuses `model` by design: runtime: torch, a model of TORCH_UNAVAILABLE."""
    return target.name == TORCH and model in TORCH_UNAVAILABLE


@contextlib.contextmanager
def unavailable_on_torch(target: Target, model: str | None) -> Iterator[None]:
    """Run a QA check as it is; where the target refuses `model` by design, expect the check to
    fail with that refusal instead: UNAVAILABLE (503), with the documented reason."""
    if not by_design(target, model):
        yield
        return
    assert model is not None
    with pytest.raises(Exception) as raised:  # the check's own failure, which carries the server's answer
        yield
    message = str(raised.value)
    assert unavailable(model) in message, message
    if message.startswith("["):  # a stream's error answers carry no code (as Triton's): only the text
        assert message.startswith(("[StatusCode.UNAVAILABLE] ", "[503] ")), message


class PollingOffTriton(standalone.TritonProcess):
    """Standalone Triton in `--model-control-mode=none` (QA's default): every model of the
    repository loads at start, and load/unload requests are refused as QA expects."""

    def command(self) -> list[str]:
        command = super().command()
        command[command.index("--model-control-mode") + 1] = "none"
        return command

    def start(self, timeout_s: float = 120.0) -> PollingOffTriton:
        libs = str(triton_layout.install_root() / triton_layout.LIBS)
        env = {
            **os.environ,
            "LD_LIBRARY_PATH": os.pathsep.join(filter(None, [libs, os.environ.get("LD_LIBRARY_PATH")])),
        }
        self.process = subprocess.Popen(
            self.command(),
            env=env,
            stdout=self.log_path.open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            self._wait("/v2/health/ready", time.monotonic() + timeout_s)
        except BaseException:
            self.stop()
            raise
        return self


def _everything() -> standalone.Allotment:
    """No pinning, one instance per model: QA's own server settings."""
    return standalone.Allotment(tuple(sorted(os.sched_getaffinity(0))), 1, 1, "QA")


def _endpoint(process: standalone.TritonProcess) -> Endpoint:
    assert process.grpc is not None
    return Endpoint(f"127.0.0.1:{process.port}", process.grpc.address)


@contextlib.contextmanager
def standalone_target(repository: Path, control_repository: Path, workdir: Path) -> Iterator[Target]:
    main_dir, control_dir = workdir / "main", workdir / "control"
    main_dir.mkdir()
    control_dir.mkdir()
    with (
        PollingOffTriton(repository, _everything(), main_dir, grpc=True) as main,
        standalone.TritonProcess(control_repository, _everything(), control_dir, grpc=True) as control,
    ):
        yield Target(STANDALONE, _endpoint(main), _endpoint(control), repository, control_repository)


@contextlib.contextmanager
def serve_app_target(
    runtime: str, repository: Path, control_repository: Path, workdir: Path, ray_address: str
) -> Iterator[Target]:
    config = app_config({"model_repository": str(repository), "runtime": runtime}, fixed_replicas(1))
    # Replicas' own gRPC servers of two Ray clusters on one host can listen on the same port (seen:
    # two on *:40000, from Ray's default range) and the kernel then splits connections between them:
    # direct-ingress ports of this run's own (not isolation_env's HAProxy paths: a socket path under
    # pytest's tmp is too long for Unix sockets).
    env_vars = config["controller_options"]["runtime_env"]["env_vars"]
    env_vars.update({k: v for k, v in isolation_env(workdir).items() if k.startswith(DIRECT_INGRESS)})
    control = copy.deepcopy(config["applications"][0])
    control.update(name="control", route_prefix=CONTROL_PREFIX)
    control["args"].update(model_repository=str(control_repository), model_control=True)
    config["applications"].append(control)
    run = ServeRun(config, workdir, address=ray_address).start(timeout_s=300)
    try:
        grpc = f"127.0.0.1:{config['grpc_options']['port']}"
        target = Target(
            runtime,
            Endpoint(f"127.0.0.1:{run.port}", grpc, {"application": "triton"}),
            Endpoint(f"127.0.0.1:{run.port}{CONTROL_PREFIX}", grpc, {"application": "control"}),
            repository,
            control_repository,
        )
        for endpoint in (target.main, target.control):
            _wait_ready(endpoint, run)
        yield target
    finally:
        run.stop()


def _wait_ready(endpoint: Endpoint, run: ServeRun, timeout_s: float = 120.0) -> None:
    """Each application's HTTP route and gRPC backend become ready on their own."""
    deadline = time.monotonic() + timeout_s
    with endpoint.grpc_client() as client:
        while True:
            with contextlib.suppress(Exception):
                if http_get(f"{endpoint.base_url}/v2/health/ready")[0] == 200 and client.is_server_ready():
                    return
            if time.monotonic() > deadline:
                raise TimeoutError(f"{endpoint} not ready after {timeout_s} s:\n{run.log()}")
            time.sleep(0.3)
