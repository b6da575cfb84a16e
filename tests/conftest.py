"""Session fixtures: one workspace, one Prefect test harness, one Ray head, one MLflow store, one trained model.

The workspace and the process environment are set before Prefect, MLflow or Ray are imported, so every test
drives the real components against files under one temporary folder.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

WORKSPACE = Path(tempfile.mkdtemp(prefix="promptseg-tests-"))
RESOLUTION = 64
TRAIN_STEPS = 300
os.environ["PROMPTSEG_WORKSPACE"] = str(WORKSPACE)
os.environ["PROMPTSEG_RESOLUTION"] = str(RESOLUTION)
with socket.socket() as _probe:
    _probe.bind(("127.0.0.1", 0))
    os.environ["PROMPTSEG_SERVE_PORT"] = str(_probe.getsockname()[1])
for variable in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI", "PREFECT_API_URL"):
    os.environ.pop(variable, None)

from pipelines import environment, stages  # noqa: E402
from promptseg.settings import Settings  # noqa: E402
from storage.synthetic import write_synthetic_datasets  # noqa: E402

environment.prepare(Settings())
SAMPLE_MANIFEST = Path(__file__).resolve().parents[1] / "data" / "samples" / "ct-abdomen-61" / "manifest.yaml"


@pytest.fixture(scope="session")
def settings() -> Settings:
    return Settings()


@pytest.fixture(scope="session", autouse=True)
def workspace_cleanup() -> Iterator[None]:
    yield
    shutil.rmtree(WORKSPACE, ignore_errors=True)


@pytest.fixture(scope="session")
def prefect_harness() -> Iterator[None]:
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session")
def raw_sources(settings: Settings) -> list[Path]:
    return [*write_synthetic_datasets(settings.root / "sources", n_cases=4, seed=0), SAMPLE_MANIFEST]


@pytest.fixture(scope="session")
def preprocessed(settings: Settings, prefect_harness: None, raw_sources: list[Path]) -> dict:
    """Ingest and preprocess every source once; returns the preprocess report."""
    stages.ingest(settings, raw_sources)
    return stages.preprocess(settings)


@pytest.fixture(scope="session")
def ray_head(settings: Settings) -> Iterator[str]:
    from promptseg import cluster

    address = cluster.connect(settings.services_dir, None)
    yield address
    stages.stop_serving(settings)


@pytest.fixture(scope="session")
def trained(settings: Settings, preprocessed: dict, ray_head: str) -> dict:
    """The one model trained per session (2 Ray workers), evaluated (quick profile) and registered as the
    challenger."""
    return stages.train(settings, steps=TRAIN_STEPS, run_name="session-model")


@pytest.fixture(scope="session")
def served(settings: Settings, trained: dict) -> str:
    """The trained version promoted to champion and served over HTTP; returns the base URL."""
    stages.promote(settings, version=trained["version"])
    return stages.serve(settings)
