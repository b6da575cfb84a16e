"""Scale-out shown on one machine: a second Ray node joins the session's head and a 2-worker training spreads over
both nodes; the task store is switched to s3:// against a local S3-compatible server (moto), written by the real
preprocess flow and read back by the episode sampler. The only switches are settings."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import boto3
import numpy as np
import pytest
import ray
from mlflow import MlflowClient
from moto.server import ThreadedMotoServer

from pipelines import cluster, stages
from pipelines.settings import Settings
from storage.reports import PreprocessReport
from storage.sampler import EpisodeSampler
from storage.task_store import TaskStore


def _alive_nodes() -> int:
    return sum(1 for node in ray.nodes() if node["Alive"])


def test_a_two_worker_training_spreads_over_two_nodes(
    settings: Settings, preprocessed: PreprocessReport, ray_head: str
) -> None:
    before = _alive_nodes()
    node = cluster.start_worker_node(ray_head, 1, settings.services_dir / "second-node.log")
    try:
        deadline = time.monotonic() + 90
        while _alive_nodes() < before + 1 and time.monotonic() < deadline:
            time.sleep(0.5)
        assert _alive_nodes() == before + 1, (settings.services_dir / "second-node.log").read_text()[-2000:]
        outcome = stages.train(
            settings,
            steps=4,
            num_workers=2,
            placement_strategy="SPREAD",
            run_name="two-nodes",
            register=False,
            evaluate=False,
        )
    finally:
        cluster.stop_worker_node(node)
    nodes = MlflowClient(settings.registry.tracking_uri).get_run(outcome.run_id).data.tags["worker_nodes"].split(",")
    assert len(nodes) == 2 and len(set(nodes)) == 2  # one worker on each node
    assert np.isfinite(outcome.final_loss)


@pytest.fixture
def s3_endpoint(monkeypatch: pytest.MonkeyPatch) -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    url = f"http://127.0.0.1:{port}"
    for name, value in {
        "AWS_ENDPOINT_URL": url,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(name, value)
    boto3.client("s3").create_bucket(Bucket="promptseg")
    yield url
    server.stop()


def test_the_task_store_runs_on_s3(
    settings: Settings, preprocessed: PreprocessReport, s3_endpoint: str, tmp_path: Path
) -> None:
    on_s3 = settings.model_copy(update={"store_url": "s3://promptseg/store.zarr"})
    TaskStore.open(on_s3.store, on_s3.resolution, create=True)
    report = stages.preprocess(on_s3, ["synth-center-a"])
    assert not report.failures and report.datasets[0].slices > 0
    store = TaskStore.open(on_s3.store, on_s3.resolution)
    assert store.datasets() == ["synth-center-a"]
    objects = boto3.client("s3").list_objects_v2(Bucket="promptseg", Prefix="store.zarr/")["KeyCount"]
    assert objects > 10  # the arrays really live in the bucket
    episode = EpisodeSampler(store, store.tasks(), seed=0).sample(n_prompts=2, n_queries=1)
    assert episode.prompt_images.shape == (2, 1, on_s3.resolution, on_s3.resolution)
