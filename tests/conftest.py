"""What every test session shares: one temporary workspace and the process environment pointing at it, set before
Prefect, MLflow or Ray can be imported, and the settings read from it.

tests/unit holds fast tests that start no service (no Ray, Prefect, MLflow or HTTP); tests/integration drives the
real components (its conftest starts them once per session).
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
os.environ["PROMPTSEG_WORKSPACE"] = str(WORKSPACE)
os.environ["PROMPTSEG_RESOLUTION"] = str(RESOLUTION)
os.environ["PROMPTSEG_SERVE_MAX_BODY_MB"] = "16"  # small limits, so the 413 and decompression-bomb tests stay cheap
os.environ["PROMPTSEG_SERVE_MAX_DECODED_MB"] = "256"
os.environ["RAY_metrics_report_interval_ms"] = "1000"  # noqa: SIM112 - Ray's spelling; /metrics lags 1 s, not 10
with socket.socket() as _probe:
    _probe.bind(("127.0.0.1", 0))
    os.environ["PROMPTSEG_SERVE_PORT"] = str(_probe.getsockname()[1])
for variable in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI", "PREFECT_API_URL"):
    os.environ.pop(variable, None)

from pipelines import environment  # noqa: E402
from pipelines.settings import Settings  # noqa: E402

environment.prepare(Settings())


@pytest.fixture(scope="session")
def settings() -> Settings:
    return Settings()


@pytest.fixture(scope="session", autouse=True)
def workspace_cleanup() -> Iterator[None]:
    yield
    shutil.rmtree(WORKSPACE, ignore_errors=True)
