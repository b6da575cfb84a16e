"""The resident memory of running processes, for the endpoint's memory checks (bench/bench_hardening.py and the
test that the worst request a replica allows stays within its budget): `RssSampler` samples processes' RSS every
`SAMPLE_S` on a thread, `baseline_rss` takes their median over a second, and `replica_pid` finds the process of
a Serve application's replica through Ray's state API.
"""

from __future__ import annotations

import statistics
import threading
import time

import psutil
from ray.util.state import list_actors

SAMPLE_S = 0.05
DEPLOYMENT = "PromptSegEndpoint"


class RssSampler:
    """The RSS of some processes (by name), sampled every `SAMPLE_S` on a thread while in use."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.processes = {name: psutil.Process(pid) for name, pid in pids.items()}
        self.samples: dict[str, list[int]] = {name: [] for name in pids}
        self.times: list[float] = []  # perf_counter of each sweep
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.times.append(time.perf_counter())
            for name, process in self.processes.items():
                self.samples[name].append(process.memory_info().rss)
            self._stop.wait(SAMPLE_S)

    def peak(self, name: str) -> int:
        return max(self.samples[name])

    def peak_between(self, name: str, start: float, end: float) -> int | None:
        """The largest sample of `name` taken between perf_counter times `start` and `end`."""
        values = [v for t, v in zip(self.times, self.samples[name], strict=True) if start <= t <= end]
        return max(values) if values else None

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.times.append(time.perf_counter())
        for name, process in self.processes.items():  # one last sample after the work
            self.samples[name].append(process.memory_info().rss)


def baseline_rss(pids: dict[str, int], seconds: float = 1.0) -> dict[str, int]:
    """Median RSS of each process over `seconds` of sampling."""
    with RssSampler(pids) as sampler:
        time.sleep(seconds)
    return {name: int(statistics.median(values)) for name, values in sampler.samples.items()}


def replica_pid(dashboard: str, application: str) -> int:
    """The process of the one replica of Serve `application` on the Ray head whose dashboard is at `dashboard`."""
    actors = list_actors(address=dashboard, filters=[("state", "=", "ALIVE")], limit=1000, detail=True)
    pids = [
        actor.pid
        for actor in actors
        if DEPLOYMENT in actor.class_name and (actor.name or "").startswith(f"SERVE_REPLICA::{application}#")
    ]
    if len(pids) != 1:
        raise RuntimeError(f"expected one replica of {application}, found processes {pids}")
    return pids[0]


def proxy_pid(dashboard: str) -> int:
    """The process of the Serve HTTP proxy on the Ray head whose dashboard is at `dashboard`."""
    pids = [
        actor.pid
        for actor in list_actors(address=dashboard, filters=[("state", "=", "ALIVE")], limit=1000)
        if actor.class_name == "ProxyActor"
    ]
    if len(pids) != 1:
        raise RuntimeError(f"expected one HTTP proxy, found processes {pids}")
    return pids[0]
