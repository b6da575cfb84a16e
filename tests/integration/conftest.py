"""Integration fixtures, one each per session: a Prefect test harness, the ingested and preprocessed store, a Ray
head, the MLflow store with one tiny model trained (2 Ray workers), evaluated and registered, and that model served
over HTTP.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipelines import stages
from pipelines.demo import sample_manifests
from pipelines.outcomes import TrainingOutcome
from pipelines.settings import Settings
from storage.reports import PreprocessReport
from storage.synthetic import write_synthetic_datasets

TRAIN_STEPS = 300


@pytest.fixture(scope="session")
def prefect_harness() -> Iterator[None]:
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session")
def raw_sources(settings: Settings) -> list[Path]:
    """The simulator's three centers and the six real datasets of data/samples, as the demo ingests them."""
    return [*write_synthetic_datasets(settings.root / "sources", n_cases=4, seed=0), *sample_manifests()]


@pytest.fixture(scope="session")
def preprocessed(settings: Settings, prefect_harness: None, raw_sources: list[Path]) -> PreprocessReport:
    """Ingest and preprocess every source once; returns the preprocess report."""
    stages.ingest(settings, raw_sources)
    return stages.preprocess(settings)


@pytest.fixture(scope="session")
def ray_head(settings: Settings) -> Iterator[str]:
    from pipelines import cluster

    address = cluster.connect(settings.services_dir, None)
    yield address
    stages.stop_serving(settings)


@pytest.fixture(scope="session")
def trained(settings: Settings, preprocessed: PreprocessReport, ray_head: str) -> TrainingOutcome:
    """The one model trained per session (2 Ray workers), evaluated (quick profile) and registered as the
    challenger."""
    return stages.train(settings, steps=TRAIN_STEPS, run_name="session-model")


@pytest.fixture(scope="session")
def served(settings: Settings, trained: TrainingOutcome) -> str:
    """The trained version promoted to champion and served over HTTP; returns the base URL."""
    stages.promote(settings, version=trained.version)
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
