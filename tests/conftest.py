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

import numpy as np
import pytest
from PIL import Image

WORKSPACE = Path(tempfile.mkdtemp(prefix="promptseg-tests-"))
RESOLUTION = 64
TRAIN_STEPS = 300
os.environ["PROMPTSEG_WORKSPACE"] = str(WORKSPACE)
os.environ["PROMPTSEG_RESOLUTION"] = str(RESOLUTION)
os.environ["PROMPTSEG_SERVE_MAX_BODY_MB"] = "16"  # small limits, so the 413 and decompression-bomb tests stay cheap
os.environ["PROMPTSEG_SERVE_MAX_VOLUME_MB"] = "64"
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


def _png(path: Path, array: np.ndarray) -> Path:
    Image.fromarray(array.astype(np.uint8)).save(path)
    return path


@pytest.fixture(scope="session")
def http_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Path]]:
    """Two prompt pairs and two queries of different native sizes: a bright disc on a darker background."""
    folder = tmp_path_factory.mktemp("http")
    out: dict[str, list[Path]] = {"images": [], "masks": [], "queries": []}
    for i, (h, w) in enumerate([(70, 90), (64, 64)]):
        yy, xx = np.mgrid[:h, :w]
        disc = (yy - h / 2) ** 2 + (xx - w / 2 - 5 * i) ** 2 < (12 + 2 * i) ** 2
        out["images"].append(_png(folder / f"p{i}.png", 60 + 150 * disc))
        out["masks"].append(_png(folder / f"p{i}_mask.png", 255 * disc))
    for j, (h, w) in enumerate([(80, 60), (50, 100)]):
        yy, xx = np.mgrid[:h, :w]
        out["queries"].append(_png(folder / f"q{j}.png", 60 + 150 * ((yy - h / 3) ** 2 + (xx - w / 2) ** 2 < 100)))
    return out
