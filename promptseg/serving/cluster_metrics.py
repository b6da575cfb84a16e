"""GET /metrics: the endpoint's metrics summed over the replicas of one Serve application, on every node.

Replicas record Ray Serve metrics (promptseg.serving.gateway). Ray's metrics agent on each node exports them as
Prometheus text on the node's metrics port (the targets Ray writes for Prometheus's service discovery), named
`ray_promptseg_*`, one series per replica. This reads every alive node's agent, keeps the application's series and
sums them over replicas and nodes under their own names (`promptseg_*`, only the metrics' own labels). Values lag
the requests by up to Ray's metrics report interval (`RAY_metrics_report_interval_ms`, 10 s by default), and a
replica that stopped drops out once its agent forgets it. Ray derives a histogram's `_sum` from its buckets'
midpoints, so exact totals are counters; a gauge must be set again within two report intervals or it is dropped.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

import httpx
import ray
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

RAY_PREFIX = "ray_"


def _agent_texts(timeout_s: float) -> list[str]:
    """The Prometheus text of every alive node's metrics agent (an agent that does not answer is left out)."""
    texts = []
    with httpx.Client(timeout=timeout_s) as http:
        for node in ray.nodes():
            if not (node["Alive"] and node.get("MetricsExportPort")):
                continue
            try:
                response = http.get(f"http://{node['NodeManagerAddress']}:{node['MetricsExportPort']}/metrics")
            except httpx.HTTPError:
                continue
            if response.is_success:
                texts.append(response.text)
    return texts


def summed(texts: Iterable[str], application: str, names: set[str], labels: set[str]) -> list[Metric]:
    """The metrics `names` (without Ray's prefix) of `application`, each sample summed over the series that differ
    only in labels outside `labels` (replica, worker, node, ...)."""
    found: dict[str, Metric] = {}
    totals: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = defaultdict(lambda: defaultdict(float))
    for text in texts:
        for family in text_string_to_metric_families(text):
            name = family.name.removeprefix(RAY_PREFIX)
            if not family.name.startswith(RAY_PREFIX) or name not in names:
                continue
            found.setdefault(name, Metric(name, family.documentation, family.type))
            for sample in family.samples:
                if sample.labels.get("application") != application:
                    continue
                kept = tuple(sorted((k, v) for k, v in sample.labels.items() if k in labels))
                totals[name][sample.name.removeprefix(RAY_PREFIX), kept] += sample.value
    for name, metric in found.items():
        for (sample_name, kept), value in totals[name].items():
            metric.add_sample(sample_name, dict(kept), value)
    return list(found.values())


class _Collected:
    def __init__(self, metrics: list[Metric]) -> None:
        self.metrics = metrics

    def collect(self) -> list[Metric]:
        return self.metrics


def cluster_metrics(application: str, names: set[str], labels: set[str], timeout_s: float = 5.0) -> bytes:
    """Prometheus text of the metrics `names` summed over `application`'s replicas (see `summed`)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collected(summed(_agent_texts(timeout_s), application, names, labels)))
    return generate_latest(registry)
