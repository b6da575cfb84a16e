"""Finding or starting the Ray instance the platform runs on, and recording it in the workspace.

Order: `RAY_ADDRESS` (a cluster), else the head this workspace started and recorded (if still alive), else a new
head. A new head is `ray start --head --block` in its own process group, so `promptseg serve start`, `query`,
training and `serve stop` in later processes all find the same instance; its record also names its dashboard.

Exposure: a head on loopback (the default) has every port on loopback: GCS, raylet, workers, agents, Ray Client
server, dashboard and metrics. Every Ray server binds to all interfaces unless its node's address is loopback, and
Ray (2.60, on Linux) replaces a loopback address, given as `--node-ip-address` or as the address to connect to, by
the machine's routable one unless its switch for a local-only instance is set: `LOCAL_ONLY`, in the environment
of the head and of every process that connects to a loopback address (`connect` sets it; from a shell,
`RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 ray status --address 127.0.0.1:<port>`). A node joins such a head through
pipelines.ray_local_node. A head or node beyond loopback is refused unless Ray's token authentication is on
(`RAY_AUTH_MODE=token` and a token on every node: docs.ray.io/en/latest/ray-security/token-auth.html).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import ray
from ray._private import ray_constants

from promptseg.serving.options import is_loopback

RECORD = "ray.json"
RAY = Path(sys.executable).with_name("ray")
LOCAL_ONLY = {ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR: "0"}  # Ray keeps loopback addresses


class InsecureRayNode(RuntimeError):
    """A Ray node would listen beyond loopback without token authentication."""


def _node_environment(host: str) -> dict[str, str]:
    """The environment of a Ray node's processes on `host`: local-only on loopback, else token authentication."""
    if is_loopback(host):
        return {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", **LOCAL_ONLY}
    if os.environ.get("RAY_AUTH_MODE", "").lower() != "token":
        raise InsecureRayNode(
            f"a Ray node on {host} (beyond loopback) needs token authentication: set RAY_AUTH_MODE=token on every "
            "node and give them one token (`ray get-auth-token --generate`)"
        )
    environment = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    environment.pop(ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR, None)
    return environment


def _connect_locally_only() -> None:
    """Let this process reach a loopback-only head (and the processes it starts, through the variable): Ray read
    the switch when it was imported, so its copy is set too."""
    os.environ.update(LOCAL_ONLY)
    ray_constants.ENABLE_RAY_CLUSTER = False


def _free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _reachable(address: str) -> bool:
    host, port = address.rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port)), timeout=1.0):
            return True
    except OSError:
        return False


def recorded_head(services_dir: Path) -> dict | None:
    """The head this workspace started, if its record exists and it still answers."""
    path = services_dir / RECORD
    if not path.exists():
        return None
    record = json.loads(path.read_text())
    return record if _reachable(record["address"]) else None


def start_head(
    services_dir: Path, host: str = "127.0.0.1", num_cpus: int | None = None, timeout_s: float = 60.0
) -> str:
    """Start a Ray head in its own process group and record its address; return the address. On loopback every
    port stays on loopback; beyond it, token authentication must be on (`InsecureRayNode`)."""
    environment = _node_environment(host)
    services_dir.mkdir(parents=True, exist_ok=True)
    port, dashboard_port = _free_port(host), _free_port(host)
    # More logical CPUs than cores: a Serve replica and a 2-worker TorchTrainer must fit together.
    cpus = num_cpus or max(4, 2 * (os.cpu_count() or 1))
    command = [
        str(RAY),
        "start",
        "--head",
        "--block",
        f"--port={port}",
        f"--node-ip-address={host}",
        f"--num-cpus={cpus}",
        "--include-dashboard=true",
        f"--dashboard-host={host}",
        f"--dashboard-port={dashboard_port}",
        "--disable-usage-stats",
    ]
    log = open(services_dir / "ray-head.log", "ab")  # noqa: SIM115 - handed to the detached child
    process = subprocess.Popen(
        command,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env=environment,
    )
    address = f"{host}:{port}"
    deadline = time.monotonic() + timeout_s
    while not _reachable(address):
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"Ray head did not start; see {services_dir / 'ray-head.log'}")
        time.sleep(0.5)
    dashboard = f"http://{host}:{dashboard_port}"
    (services_dir / RECORD).write_text(json.dumps({"address": address, "pid": process.pid, "dashboard": dashboard}))
    return address


def dashboard_url(services_dir: Path) -> str | None:
    """The dashboard of the head this workspace started, if it still runs."""
    record = recorded_head(services_dir)
    return record.get("dashboard") if record else None


def start_worker_node(address: str, num_cpus: int, log_path: Path, host: str = "127.0.0.1") -> subprocess.Popen:
    """Join another Ray node to the head at `address` (in its own process group; several may share one machine,
    so every agent port is chosen free). `stop_worker_node` takes it out again. On loopback every port of the node
    stays on loopback (through pipelines.ray_local_node); beyond it, token authentication must be on."""
    environment = _node_environment(host)
    ports = {
        name: _free_port(host)
        for name in (
            "dashboard-agent-listen-port",
            "dashboard-agent-grpc-port",
            "metrics-export-port",
            "runtime-env-agent-port",
        )
    }
    ray_start = [sys.executable, "-m", "pipelines.ray_local_node"] if is_loopback(host) else [str(RAY)]
    command = [
        *ray_start,
        "start",
        "--block",
        f"--address={address}",
        f"--node-ip-address={host}",
        f"--num-cpus={num_cpus}",
        "--disable-usage-stats",
        *(f"--{name}={port}" for name, port in ports.items()),
    ]
    log = open(log_path, "ab")  # noqa: SIM115 - handed to the detached child
    return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=environment)


def stop_worker_node(process: subprocess.Popen, timeout_s: float = 30.0) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def connect(services_dir: Path, ray_address: str | None, *, start: bool = True) -> str:
    """Connect this process to the platform's Ray instance (starting a head if allowed); return its address."""
    if ray_address:
        address = ray_address
    elif (record := recorded_head(services_dir)) is not None:
        address = record["address"]
    elif start:
        address = start_head(services_dir)
    else:
        raise RuntimeError("no Ray instance recorded in this workspace and RAY_ADDRESS is unset")
    if not ray.is_initialized():
        if is_loopback(address.split("://")[-1].rsplit(":", 1)[0]):
            _connect_locally_only()
        ray.init(address=address, log_to_driver=False, logging_level="WARNING")
    return address


def stop_head(services_dir: Path, timeout_s: float = 10.0) -> bool:
    """Stop the head this workspace started (its whole process group); False if none was recorded."""
    path = services_dir / RECORD
    if not path.exists():
        return False
    pid = json.loads(path.read_text())["pid"]
    if ray.is_initialized():
        ray.shutdown()
    try:
        os.killpg(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            os.killpg(pid, 0)
            time.sleep(0.3)
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    path.unlink()
    return True
