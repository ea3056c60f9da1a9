"""Standalone Triton: the `tritonserver` binary of the same wheel serve_app's Triton comes from.

`python -m serve_app.triton_install install` unpacks only the core libraries and backends of
`nvidia-pytriton==0.7.0` into `serve_app.triton_layout.install_root()`; this module takes the
wheel's `pytriton/tritonserver/bin/tritonserver` into the benchmark cache (benchmarks.fetch)
and runs it on those libraries (LD_LIBRARY_PATH: the binary's RPATH points into the wheel's
own tree) with the installed backends, the native PyTorch backend serve_app uses included.

CPU allotment: what configs/app.yaml's serve_app deployment gets at full scale, as one process.
A serve_app replica holds one instance of each model (Triton's default on CPU) and sets the
PyTorch backend's `INTRA_OP_THREAD_COUNT` to its `num_cpus`; so standalone Triton loads each
model with a config override of `instance_group { count: <replicas> kind: KIND_CPU }` and
`INTRA_OP_THREAD_COUNT: <num_cpus>`, pinned (taskset) to `replicas x num_cpus` CPUs. The
repository on disk is the one every contender uses, unmodified.
"""

from __future__ import annotations

import functools
import json
import math
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from google.protobuf import json_format, text_format
from tritonclient.grpc import model_config_pb2

from benchmarks.fetch import CACHE, wheel_member
from benchmarks.servers import GrpcTarget, StopReport
from devtools.processes import answers, free_port, http_post, interrupt_group, spawn, wait_ready
from serve_app import triton_layout

PYTRITON = "nvidia-pytriton==0.7.0"
BINARY = CACHE / "nvidia-pytriton-0.7.0" / "bin" / "tritonserver"
INTRA_OP_THREADS = "INTRA_OP_THREAD_COUNT"
TORCHSCRIPT = ("pytorch_libtorch", "pytorch")


def unavailable() -> str | None:
    """Why standalone Triton cannot run here, or None."""
    if triton_layout.backend_directory() is None:
        return f"Triton is not installed in this environment (`{triton_layout.INSTALL_COMMAND}`)"
    built_from = triton_layout.installed().get("pytriton")
    if built_from != PYTRITON:
        return f"the installed Triton libraries come from {built_from}, the binary from {PYTRITON}"
    return triton_layout.pytorch_backend_problem()


def binary() -> Path:
    """The wheel's `tritonserver`, extracted into the cache on first use."""
    return wheel_member(PYTRITON, "pytriton/tritonserver/bin/tritonserver", BINARY, executable=True)


@dataclass(frozen=True)
class Allotment:
    """CPUs, model instances and torch threads standalone Triton gets."""

    cpus: tuple[int, ...]
    instances: int
    threads: int
    basis: str  # the serve_app deployment it mirrors

    @property
    def pinned(self) -> bool:
        """Fewer CPUs than this process may use: taskset restricts Triton to them."""
        return set(self.cpus) != os.sched_getaffinity(0)

    def describe(self) -> str:
        cpus = ",".join(map(str, self.cpus))
        how = "taskset" if self.pinned else "all this machine has, no taskset needed"
        return (
            f"CPUs {cpus} ({how}), {self.instances} instance(s) x {INTRA_OP_THREADS} {self.threads} "
            f"per model, as serve_app's deployment at full scale ({self.basis})"
        )


def allotment(deployment: dict[str, Any]) -> Allotment:
    """The allotment mirroring a serve_app deployment config (num_replicas or max_replicas)."""
    fixed = deployment.get("num_replicas")
    replicas = int(fixed) if isinstance(fixed, int) else int(deployment["autoscaling_config"]["max_replicas"])
    num_cpus = float(deployment.get("ray_actor_options", {}).get("num_cpus", 1))
    available = sorted(os.sched_getaffinity(0))
    count = min(len(available), max(1, math.ceil(replicas * num_cpus)))
    return Allotment(
        cpus=tuple(available[:count]),
        instances=replicas,
        threads=max(1, int(num_cpus)),
        basis=f"{replicas} replica(s) x {num_cpus:g} CPU",
    )


def load_override(model_dir: Path, share: Allotment) -> dict[str, Any]:
    """The `load` request body: the model's config.pbtxt with the allotment's instances and threads."""
    config = text_format.Parse((model_dir / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    config.name = model_dir.name
    if config.platform in TORCHSCRIPT or config.backend in TORCHSCRIPT:
        if INTRA_OP_THREADS not in config.parameters:
            config.parameters[INTRA_OP_THREADS].string_value = str(share.threads)
        if not config.instance_group:
            config.instance_group.add(
                kind=model_config_pb2.ModelInstanceGroup.KIND_CPU, count=share.instances
            )
    text = json_format.MessageToJson(config, preserving_proto_field_name=True)
    return {"parameters": {"config": text}}


class TritonProcess:
    """`tritonserver` over one repository on a free HTTP port (and, with `grpc`, a free gRPC
    port: Triton's own GRPCInferenceService); a context manager."""

    def __init__(self, repository: Path, share: Allotment, workdir: Path, grpc: bool = False) -> None:
        self.repository = repository
        self.share = share
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.grpc = GrpcTarget(f"127.0.0.1:{free_port()}") if grpc else None
        self.log_path = workdir / "tritonserver.log"
        self.process: subprocess.Popen | None = None
        self.ready_after_s = float("nan")

    def command(self) -> list[str]:
        backends = triton_layout.backend_directory()
        assert backends is not None, unavailable()
        pin: list[str] = []
        if self.share.pinned:
            taskset = shutil.which("taskset")
            if taskset is None:
                raise RuntimeError("taskset is not installed (util-linux): cannot pin standalone Triton")
            pin = [taskset, "-c", ",".join(map(str, self.share.cpus))]
        if self.grpc is None:
            grpc = ["--allow-grpc", "false"]
        else:
            host, port = self.grpc.address.rsplit(":", 1)
            grpc = ["--allow-grpc", "true", "--grpc-address", host, "--grpc-port", port]
        return [
            *pin, str(binary()),
            "--model-repository", str(self.repository),
            "--backend-directory", backends,
            "--model-control-mode", "explicit",
            "--http-address", "127.0.0.1", "--http-port", str(self.port),
            *grpc, "--allow-metrics", "false",
        ]  # fmt: skip

    def start(self, timeout_s: float = 120.0) -> TritonProcess:
        """Start it, load every model of the repository with the allotment, wait until ready."""
        command = self.command()
        libs = str(triton_layout.install_root() / triton_layout.LIBS)
        env = {
            **os.environ,
            "LD_LIBRARY_PATH": os.pathsep.join(filter(None, [libs, os.environ.get("LD_LIBRARY_PATH")])),
        }
        started = time.monotonic()
        self.process = spawn(command, self.log_path, env=env)
        try:
            self._wait("/v2/health/live", started + timeout_s)
            for model_dir in sorted(p for p in self.repository.iterdir() if (p / "config.pbtxt").is_file()):
                body = json.dumps(load_override(model_dir, self.share)).encode()
                path = f"/v2/repository/models/{model_dir.name}/load"
                status, answer = http_post(self.url + path, body, {"Content-Type": "application/json"}, 120)
                if status != 200:
                    raise RuntimeError(f"loading {model_dir.name}: HTTP {status} {answer[:500]!r}")
            self._wait("/v2/health/ready", started + timeout_s)
            self.ready_after_s = time.monotonic() - started
        except BaseException:
            self.stop()
            raise
        return self

    def _wait(self, path: str, deadline: float) -> None:
        assert self.process is not None
        ready = functools.partial(answers, self.url + path)
        wait_ready(self.process, ready, deadline - time.monotonic(), f"tritonserver ({path})", self.log, 0.1)

    def log(self, tail: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-tail:]

    def stop(self, timeout_s: float = 40.0) -> StopReport:
        """SIGINT (Triton drains and unloads), then SIGKILL to what is left of its process group
        (after `timeout_s` if it hangs)."""
        if self.process is None:
            return StopReport(0.0, True)
        seconds, graceful = interrupt_group(self.process, timeout_s)
        self.process = None
        return StopReport(seconds, graceful)

    def __enter__(self) -> TritonProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
