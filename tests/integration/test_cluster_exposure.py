"""The Ray head the CLI starts (pipelines.cluster.connect, the session's `ray_head`) and a node that joins it listen
on loopback only: every LISTEN socket of their processes (GCS, raylet, agents, Ray Client server, dashboard,
workers, and Serve's and training's actors while they run) and of this driver is on 127.0.0.1 or ::1.

One known exception, left open: Ray Serve 2.60 binds each replica's inter-deployment gRPC server to all interfaces
(`[::]:0`, hard-coded in ray/serve/_private/replica.py, `_on_initialized`) whatever the node's address, so a Serve
replica running during this test has one such socket. It is reported as a warning, not failed on.
"""

from __future__ import annotations

import ipaddress
import time
import warnings

import psutil
import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from pipelines import cluster
from pipelines.settings import Settings

Socket = tuple[str, int, str]  # address, port, process name
SERVE_REPLICA = "ray::ServeRepli"  # the start of a replica's process name (the kernel keeps 15 characters)


def _listening(root: psutil.Process) -> set[Socket]:
    """The LISTEN sockets of `root` and its descendants."""
    sockets = set()
    for process in [root, *root.children(recursive=True)]:
        try:
            for connection in process.net_connections(kind="inet"):
                if connection.status == psutil.CONN_LISTEN:
                    sockets.add((connection.laddr.ip, connection.laddr.port, process.name()))
        except psutil.Error:  # a worker that exited meanwhile
            continue
    return sockets


def _listening_here() -> set[Socket]:
    here = psutil.Process()
    return {
        (connection.laddr.ip, connection.laddr.port, here.name())
        for connection in here.net_connections(kind="inet")
        if connection.status == psutil.CONN_LISTEN
    }


def _is_loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    mapped = getattr(ip, "ipv4_mapped", None)  # a dual-stack socket bound to ::ffff:127.0.0.1
    return (mapped or ip).is_loopback


def test_the_head_and_a_joined_node_listen_on_loopback_only(settings: Settings, ray_head: str) -> None:
    alive = sum(node["Alive"] for node in ray.nodes())
    log = settings.services_dir / "exposure-node.log"
    node = cluster.start_worker_node(ray_head, 1, log)
    try:
        deadline = time.monotonic() + 90
        while sum(node["Alive"] for node in ray.nodes()) < alive + 1:
            assert time.monotonic() < deadline, log.read_text()[-2000:]
            time.sleep(0.5)

        @ray.remote(num_cpus=0)
        def node_of_task() -> str:
            return ray.get_runtime_context().get_node_id()

        for info in ray.nodes():  # a task on every node, so each has a worker listening
            if info["Alive"]:
                strategy = NodeAffinitySchedulingStrategy(info["NodeID"], soft=False)
                assert ray.get(node_of_task.options(scheduling_strategy=strategy).remote()) == info["NodeID"]
        head = psutil.Process(cluster.recorded_head(settings.services_dir)["pid"])
        # this driver's own sockets (its Ray worker's, and other tests' servers, which bind loopback too)
        sockets = _listening(head) | _listening(psutil.Process(node.pid)) | _listening_here()
    finally:
        cluster.stop_worker_node(node)
    names = {name for _, _, name in sockets}
    assert {"gcs_server", "raylet"} <= names and any(name.startswith("ray::") for name in names), sockets
    beyond = {socket for socket in sockets if not _is_loopback(socket[0])}
    serve_replicas = {s for s in beyond if s[2].startswith(SERVE_REPLICA) and s[0] in ("::", "0.0.0.0")}
    assert beyond - serve_replicas == set()
    if serve_replicas:
        warnings.warn(f"Serve replicas' gRPC servers listen beyond loopback: {sorted(serve_replicas)}", stacklevel=1)
    assert {node["NodeManagerAddress"] for node in ray.nodes() if node["Alive"]} == {"127.0.0.1"}
