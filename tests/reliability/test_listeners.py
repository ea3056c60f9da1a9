"""What the shipped request path exposes: sockets, listeners, and who can reach them.

`serve run` of configs/app.yaml (free ports, the example repository) on the session
cluster, which binds Ray's own servers to loopback. Then:
- HAProxy's admin socket (mode 0666, `level admin` in Ray's template) lies in the config's
  HAProxy directory, which serve_app keeps at 0700: another user (`nobody`, via setpriv)
  cannot connect; this user can (the socket is live).
- Every TCP listener of the cluster's processes (from /proc/net/tcp{,6}) is on loopback,
  except the ones Ray binds to every interface without a setting (HAProxy's stats and
  Prometheus ports; replicas' and the fallback proxy's gRPC servers): those are listed,
  documented in the README's request-path section, and nothing else may join them.
"""

from __future__ import annotations

import os
import shutil
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import ray

from devtools.processes import command_line, descendants, is_loopback, tcp_listeners
from tests.e2e.serve_run import ServeRun, app_config, wait_for_replicas

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

# Ray's replica gRPC ports (RAY_SERVE_DIRECT_INGRESS_MIN/MAX_GRPC_PORT defaults).
REPLICA_GRPC_PORTS = range(40000, 41000)
REPLICA_HTTP_PORTS = range(30000, 31000)
CONNECT = "import socket, sys; socket.socket(socket.AF_UNIX).connect(sys.argv[1])"


def kind(pid: int) -> str:
    """`haproxy`, `raylet`, `ServeReplica`, `ProxyActor`, ...: the program, or the actor class
    in Ray's process title (`ray::ServeReplica:<app>:<deployment>.<method>`)."""
    words = command_line(pid).split()
    program = words[0] if words else "?"
    if program.startswith("ray::"):
        return program[5:].split(":")[0].split(".")[0]
    return Path(program).name


def test_admin_socket_is_private_and_listeners_stay_local(
    ray_address: str, example_repository: Path, tmp_path: Path
) -> None:
    config = app_config({"model_repository": str(example_repository)})
    env = config["controller_options"]["runtime_env"]["env_vars"]
    directory = Path(env["RAY_SERVE_HAPROXY_SOCKET_PATH"]).parent
    with ServeRun(config, tmp_path, address=ray_address) as run:
        wait_for_replicas({"RUNNING": 1}, 120)
        processes = {pid for pid, _ in descendants(os.getpid())}
        # (address, port, process kind, command line), read while the processes run.
        listeners = [
            (a, port, kind(pid), command_line(pid)[:80]) for a, port, pid in tcp_listeners(processes)
        ]
        # Ray puts HAProxy's files in <directory>/<node id>/.
        admin_socket = directory / ray.get_runtime_context().get_node_id() / "admin.sock"
        info = os.lstat(directory)
        probe = [python_for_nobody(), "-c", CONNECT, str(admin_socket)]
        as_self = subprocess.run(probe, capture_output=True, text=True, check=False)
        as_nobody = (
            subprocess.run(
                ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", *probe],
                capture_output=True,
                text=True,
                check=False,
            )
            if os.geteuid() == 0 and shutil.which("setpriv")
            else None
        )
        with socket.socket(socket.AF_UNIX) as admin:
            admin.settimeout(10)
            admin.connect(str(admin_socket))
            admin.sendall(b"show info\n")
            shown = admin.recv(4096).decode(errors="replace")

    socket_mode = stat.filemode(os.lstat(admin_socket).st_mode) if admin_socket.exists() else "gone"
    print(f"\nHAProxy directory {directory}: {stat.filemode(info.st_mode)} uid {info.st_uid}")
    print(f"{admin_socket}: {socket_mode}")
    unexpected = []
    ports = {
        "stats": int(env["RAY_SERVE_HAPROXY_STATS_PORT"]),
        "metrics": int(env["RAY_SERVE_HAPROXY_METRICS_PORT"]),
    }
    fallback_grpc = int(env.get("RAY_SERVE_FALLBACK_PROXY_GRPC_PORT", 9500))
    for address, port, who, command in listeners:
        local = is_loopback(address)
        reason = "" if local else ray_binds_everywhere(who, port, ports, fallback_grpc)
        print(f"  {address:>18} {port:>5}  {who:<24} {'loopback' if local else reason or 'UNEXPECTED'}")
        if not local and not reason:
            unexpected.append((address, port, command))
        if who == "haproxy" and port in (run.port, config.get("grpc_options", {}).get("port")):
            assert local, f"HAProxy's Serve port {port} on {address}"
        if who == "ServeReplica" and port in REPLICA_HTTP_PORTS:
            assert local, (
                f"a replica's direct-ingress HTTP port {port} on {address}: clients could bypass HAProxy"
            )

    assert stat.S_IMODE(info.st_mode) == 0o700 and info.st_uid == os.getuid(), stat.filemode(info.st_mode)
    assert "Name: HAProxy" in shown, shown
    assert as_self.returncode == 0, as_self.stderr
    if as_nobody is not None:
        print(f"connect as nobody: rc {as_nobody.returncode}, {as_nobody.stderr.strip().splitlines()[-1:]}")
        assert as_nobody.returncode != 0 and "PermissionError" in as_nobody.stderr, as_nobody.stderr
    assert not unexpected, f"listening on every interface: {unexpected}"


def ray_binds_everywhere(who: str, port: int, haproxy: dict[str, int], fallback_grpc: int) -> str:
    """Why Ray binds this listener to every interface (no setting moves it), or ''."""
    if who == "haproxy" and port in haproxy.values():
        return "Ray's HAProxy template: " + next(k for k, v in haproxy.items() if v == port) + " (`*:port`)"
    if who == "ServeReplica" and port in REPLICA_GRPC_PORTS:
        return "Ray: replica's direct-ingress gRPC server on [::]"
    if who in ("ServeReplica", "ProxyActor"):
        if who == "ProxyActor" and port == fallback_grpc:
            return "Ray: fallback proxy's gRPC server on [::]"
        return "Ray Serve's inter-deployment gRPC on [::]:0 (token-authenticated)"
    return ""


def python_for_nobody() -> str:
    """A Python another user can execute (the venv may sit in a private home)."""
    return shutil.which("python3", path="/usr/bin:/bin") or sys.executable


def test_haproxy_directory_is_made_private_and_a_foreign_one_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """serve_app.app.keep_haproxy_directory_private: created 0700, a 0755 one closed, a symlink refused."""
    from serve_app.app import keep_haproxy_directory_private

    directory = tmp_path / "haproxy"
    monkeypatch.setenv("RAY_SERVE_ENABLE_HA_PROXY", "1")
    monkeypatch.setenv("RAY_SERVE_HAPROXY_SOCKET_PATH", str(directory / "admin.sock"))
    keep_haproxy_directory_private()
    assert stat.S_IMODE(os.lstat(directory).st_mode) == 0o700
    directory.chmod(0o755)
    keep_haproxy_directory_private()
    assert stat.S_IMODE(os.lstat(directory).st_mode) == 0o700

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o777)
    directory.rmdir()
    directory.symlink_to(elsewhere)
    with pytest.raises(RuntimeError, match="not a directory of this user"):
        keep_haproxy_directory_private()
