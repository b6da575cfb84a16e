"""Process environment for the embedded defaults, set before Prefect, MLflow or Ray are imported.

Prefect reads PREFECT_HOME at import time, so the CLI calls `prepare` first; the workspace then holds Prefect's
database and result cache. Telemetry that would try the (absent) network is switched off. The workspace and
resolution in force (e.g. from `--workspace`) are exported, so a flow that reads its settings from the environment
(as a deployment's run does) works on the same workspace as the command that started it.
"""

from __future__ import annotations

import os

from pipelines.settings import Settings


def prepare(settings: Settings) -> None:
    settings.root.mkdir(parents=True, exist_ok=True)
    defaults = {
        "PREFECT_HOME": str(settings.prefect_home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_LOGGING_LEVEL": "WARNING",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_AUTH_MODE": "disabled",
        "RAY_TRAIN_V2_ENABLED": "1",
        "TQDM_DISABLE": "1",
        "DASK_DISTRIBUTED__LOGGING__DISTRIBUTED": "warning",
    }
    for key, value in defaults.items():
        os.environ.setdefault(key, value)
    # The settings in force, also for what reads them from the environment: flows (as a deployment runs them),
    # Serve replicas and Ray workers.
    os.environ["PROMPTSEG_WORKSPACE"] = str(settings.root)
    os.environ["PROMPTSEG_RESOLUTION"] = str(settings.resolution)
