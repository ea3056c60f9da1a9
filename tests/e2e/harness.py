"""Starting and stopping real `serve run` processes against a test Ray cluster."""

from __future__ import annotations

import copy
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
APP_CONFIG = ROOT / "configs" / "app.yaml"
SERVE = str(Path(sys.executable).with_name("serve"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def app_config(
    port: int, args: dict[str, Any] | None = None, deployment: dict[str, Any] | None = None
) -> dict[str, Any]:
    """configs/app.yaml with its HTTP port, app args and deployment options overridden."""
    config = copy.deepcopy(yaml.safe_load(APP_CONFIG.read_text()))
    config["http_options"]["port"] = port
    app = config["applications"][0]
    app["args"].update(args or {})
    app["deployments"][0].update(deployment or {})
    return config


def http_get(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


class ServeRun:
    """`serve run <config>` in its own process group; stopped with SIGINT like Ctrl-C."""

    def __init__(self, config: dict[str, Any], workdir: Path, address: str | None = None) -> None:
        self.config = config
        self.port = config["http_options"]["port"]
        self.url = f"http://127.0.0.1:{self.port}"
        self.workdir = workdir
        self.config_path = workdir / f"app-{self.port}.yaml"
        self.log_path = workdir / f"serve-{self.port}.log"
        self.address = address
        self.process: subprocess.Popen | None = None
        self.ready_after_s = float("nan")

    def start(self, timeout_s: float = 120.0) -> ServeRun:
        self.config_path.write_text(yaml.safe_dump(self.config))
        command = [SERVE, "run", str(self.config_path)]
        if self.address:
            command += ["--address", self.address]
        started = time.monotonic()
        self.process = subprocess.Popen(
            command,
            cwd=self.workdir,
            stdout=self.log_path.open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.wait_ready(timeout_s)
        self.ready_after_s = time.monotonic() - started
        return self

    def wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"serve run exited early:\n{self.log()}")
            try:
                if http_get(self.url + "/v2/health/ready", timeout=1)[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.3)
        raise TimeoutError(f"serve run not ready after {timeout_s} s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:]

    def stop(self, timeout_s: float = 45.0) -> float:
        """SIGINT, wait; returns how long `serve run` took to exit. Kills the group after."""
        if self.process is None:
            return 0.0
        started = time.monotonic()
        try:
            os.killpg(self.process.pid, signal.SIGINT)
            self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            pass
        except ProcessLookupError:
            pass
        elapsed = time.monotonic() - started
        # Ray's dashboard helpers outlive `serve run` in its process group.
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait()
        return elapsed

    def __enter__(self) -> ServeRun:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
