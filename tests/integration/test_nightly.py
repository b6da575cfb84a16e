"""The nightly pipeline end to end (smoke profile: the session's small data, seconds of training, `quick`
evaluation) and its schedule on a real Prefect server.

The pipeline runs as a real Prefect flow on the session's Ray head, task store and MLflow, under a workspace of its
own (same pseudonym secret, so the store's versions stay the session's) and a registered model of its own
(`promptseg-nightly`), served by a Serve application of its own at /nightly, so the session's champion and
endpoint are left alone.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import ClassVar

import httpx
import mlflow
import pytest
import torch

from pipelines.nightly import NightlyAlreadyRunning, NightlyConfig, NightlyFailed, RollOut, nightly, single_run
from pipelines.outcomes import TrainingOutcome
from pipelines.retention import RetentionLimits
from pipelines.settings import Settings
from promptseg.nets.checkpoint import load_model, save_model
from promptseg.nets.factory import build_model
from promptseg.registry.versions import CHAMPION, alias_version, move_alias, register_checkpoint
from promptseg.serving.app import deploy
from promptseg.serving.options import options_from
from storage.reports import PreprocessReport

MODEL = "promptseg-nightly"
CLI = [str(Path(sys.executable).with_name("promptseg"))]


@pytest.fixture(scope="module")
def nightly_settings(
    settings: Settings, preprocessed: PreprocessReport, ray_head: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Settings]:
    root = tmp_path_factory.mktemp("nightly-workspace")
    shutil.copy(settings.data.secret_path, root / "secret.key")
    variables = {
        "PROMPTSEG_WORKSPACE": str(root),
        "PROMPTSEG_STORE_URL": settings.store,
        "MLFLOW_TRACKING_URI": settings.registry.tracking_uri,
        "RAY_ADDRESS": ray_head,
        "PROMPTSEG_MODEL_NAME": MODEL,
    }
    with pytest.MonkeyPatch.context() as patch:
        for name, value in variables.items():
            patch.setenv(name, value)
        yield Settings()


@pytest.fixture(scope="module")
def endpoint(nightly_settings: Settings, trained: TrainingOutcome) -> str:
    """An untrained network (all weights zero: probability 0.5 everywhere, so empty masks) registered as the
    champion of `promptseg-nightly`, served at /nightly."""
    folder = nightly_settings.root / "untrained"
    network = build_model(load_model(trained.checkpoint_dir).config)
    with torch.no_grad():
        for parameter in network.parameters():
            parameter.zero_()
    save_model(network, folder)
    version = register_checkpoint(folder, trained.run_id, nightly_settings.registry.tracking_uri, MODEL)
    move_alias(
        nightly_settings.registry.tracking_uri, MODEL, CHAMPION, version, reason="nightly test: untrained champion"
    )
    options = options_from(nightly_settings.serve)
    return deploy(nightly_settings.registry.tracking_uri, MODEL, CHAMPION, options, "promptseg-nightly", "/nightly")


def _config(raw_sources: list[Path], url: str, **overrides: object) -> NightlyConfig:
    smoke = {"steps": 40, "retention": RetentionLimits(keep_checkpoints=1, keep_unpromoted=0)}
    smoke["report_test"] = False  # the session model's training covers the test-split report
    return NightlyConfig(sources=[str(source) for source in raw_sources], endpoint_url=url, **(smoke | overrides))


def _served_version(url: str) -> str:
    return httpx.get(f"{url}/v1/model", timeout=30).json()["version"]


def test_a_better_challenger_is_promoted_and_rolled_out(
    nightly_settings: Settings, endpoint: str, raw_sources: list[Path], prefect_harness: None
) -> None:
    untrained = _served_version(endpoint)
    report = nightly(_config(raw_sources, endpoint))
    assert report.status == "succeeded"
    assert report.completed_steps() == ["ingest", "preprocess", "train", "gate", "roll_out", "retention"]
    challenger = report.train.version
    assert report.gate.promoted and report.gate.champion_before == untrained
    assert report.gate.challenger_dice > report.gate.champion_dice
    assert report.gate.reused["challenger"]  # measured once, right after training
    assert report.roll_out == RollOut(rolled=True, serving=challenger, url=endpoint)
    assert _served_version(endpoint) == challenger  # responses now carry the new version
    assert len(list((nightly_settings.root / "checkpoints").iterdir())) == 1  # retention: newest only

    runs = mlflow.search_runs(
        experiment_names=[f"{nightly_settings.registry.experiment}-nightly"],
        filter_string=f"run_name = '{report.name}'",
    )
    assert runs["tags.status"].tolist() == ["succeeded"]
    assert json.loads(runs["tags.step_gate"].iloc[0])["promoted"] is True


def test_a_worse_fine_tuned_challenger_leaves_the_champion_serving(
    nightly_settings: Settings, endpoint: str, raw_sources: list[Path], trained: TrainingOutcome, prefect_harness: None
) -> None:
    tracking = nightly_settings.registry.tracking_uri
    orphan = register_checkpoint(trained.checkpoint_dir, trained.run_id, tracking, MODEL)  # never promoted
    # the session's model (300 steps), registered with the evaluation measured right after its training
    strong = register_checkpoint(trained.checkpoint_dir, trained.run_id, tracking, MODEL, trained.evaluation.recorded())
    move_alias(tracking, MODEL, CHAMPION, strong, reason="nightly test: a strong champion")
    assert httpx.post(f"{endpoint}/v1/reload", timeout=120).json()["model_version"] == strong
    # fine-tuned from the champion's weights with a learning rate that wrecks them in three steps
    report = nightly(_config(raw_sources, endpoint, steps=3, fine_tune=True, train_options={"lr": 1.0}))
    run = mlflow.get_run(report.train.run_id)
    assert run.data.params["init_weights"].endswith(f"{MODEL}-v{strong}")  # it started from the champion
    gate = report.gate
    assert not gate.promoted and gate.champion == strong, gate
    assert gate.challenger_dice < gate.champion_dice
    assert gate.reused == {"challenger": True, "champion": True}  # both measured once, on this snapshot
    assert report.roll_out.rolled is False
    assert _served_version(endpoint) == strong == alias_version(tracking, MODEL, CHAMPION)
    assert report.retention.deleted_versions == [orphan]  # no alias, never champion: gone
    remaining = {str(v.version) for v in mlflow.MlflowClient(tracking).search_model_versions(f"name = '{MODEL}'")}
    assert orphan not in remaining and strong in remaining


class _Receiver(BaseHTTPRequestHandler):
    received: ClassVar[list[dict]] = []

    def do_POST(self) -> None:
        _Receiver.received.append(json.loads(self.rfile.read(int(self.headers["content-length"]))))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def test_a_failing_step_keeps_serving_and_calls_the_webhook(
    nightly_settings: Settings, endpoint: str, tmp_path: Path, prefect_harness: None
) -> None:
    champion = _served_version(endpoint)
    receiver = HTTPServer(("127.0.0.1", 0), _Receiver)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    webhook = f"http://127.0.0.1:{receiver.server_address[1]}/hook"
    try:
        with pytest.raises(NightlyFailed) as failed:
            nightly(_config([tmp_path / "vanished-dataset"], endpoint, webhook_url=webhook))
    finally:
        receiver.shutdown()
    assert failed.value.step == "ingest" and "could not be read" in str(failed.value)
    [payload] = _Receiver.received
    assert payload["status"] == "failed" and payload["failed_step"] == "ingest" and payload["mlflow_run_id"]
    # the webhook leaves the workspace: the source is named by its keyed pseudonym, never by its path
    assert "could not be read" in payload["cause"] and "no such file or folder" in payload["cause"]
    assert "vanished-dataset" not in json.dumps(payload)
    assert (
        _served_version(endpoint) == champion == alias_version(nightly_settings.registry.tracking_uri, MODEL, CHAMPION)
    )


def test_a_second_concurrent_run_is_refused(nightly_settings: Settings, endpoint: str, prefect_harness: None) -> None:
    with single_run(), pytest.raises(NightlyAlreadyRunning):  # the slot a running nightly holds
        nightly(NightlyConfig(endpoint_url=endpoint))


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_the_deployment_is_scheduled_on_a_real_prefect_server(tmp_path: Path) -> None:
    port = _free_port()
    api = f"http://127.0.0.1:{port}/api"
    environment = {
        **os.environ,
        "PREFECT_HOME": str(tmp_path / "prefect"),
        "PREFECT_API_URL": api,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PROMPTSEG_WORKSPACE": str(tmp_path / "workspace"),
        "PROMPTSEG_NIGHTLY_TIMEZONE": "Europe/Zurich",
    }
    server_environment = {k: v for k, v in environment.items() if k != "PREFECT_API_URL"}
    server = subprocess.Popen(
        [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=server_environment,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{api}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
        scheduled = tmp_path / "scheduled"  # the global options win over the variables, in the deployment's runs too
        arguments = [*CLI, "--workspace", str(scheduled), "--resolution", "96", "schedule", "--steps", "50"]
        registered = subprocess.run(arguments, env=environment, capture_output=True, text=True, timeout=300)
        assert registered.returncode == 0, registered.stdout + registered.stderr
        [deployment] = httpx.post(f"{api}/deployments/filter", json={}, timeout=30).json()
        [entry] = deployment["schedules"]
        assert entry["schedule"]["cron"] == "0 2 * * *" and entry["schedule"]["timezone"] == "Europe/Zurich"
        assert deployment["name"] == "nightly" and deployment["work_pool_name"] == "promptseg-process"
        assert deployment["entrypoint"] == "pipelines/nightly.py:nightly"
        assert deployment["parameters"]["config"]["steps"] == 50
        assert deployment["job_variables"]["env"] == {
            "PROMPTSEG_WORKSPACE": str(scheduled.resolve()),
            "PROMPTSEG_RESOLUTION": "96",
        }
        assert deployment["global_concurrency_limit"]["limit"] == 1
        pool = httpx.get(f"{api}/work_pools/promptseg-process", timeout=30).json()
        assert pool["type"] == "process"
    finally:
        server.terminate()
        server.wait(timeout=60)
