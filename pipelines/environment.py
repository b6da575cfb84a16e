"""Process environment for the embedded defaults, set before Prefect, MLflow or Ray are imported.

Prefect reads PREFECT_HOME at import time, so the CLI calls `prepare` before any command imports it; the workspace
then holds Prefect's database and result cache. Telemetry that would try the (absent) network is switched off. The
settings in force that the CLI's global options set (`in_force`: the workspace and the resolution) are exported, so
a flow that reads its settings from the environment works on the same workspace as the command that started it:
in this process (`nightly`, the demo), in Serve replicas and Ray workers, and in a scheduled deployment's runs
(`schedule` gives the deployment the same variables).

The workspace holds patient pixels (the task store, serving jobs' uploads) and records naming source files, so it
is created owner-only (0700) and the process's file-creation mask withholds every permission from group and others
(umask 077, inherited by the processes it starts: Dask and Ray workers, the MLflow and Prefect databases they
write): whatever the stages create is owner-only, whichever library creates it.
"""

from __future__ import annotations

import os

from pipelines.settings import Settings

DEFAULTS = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_LOGGING_LEVEL": "WARNING",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_AUTH_MODE": "disabled",
    "RAY_TRAIN_V2_ENABLED": "1",
    "TQDM_DISABLE": "1",
    "DASK_DISTRIBUTED__LOGGING__DISTRIBUTED": "warning",
}


def in_force(settings: Settings) -> dict[str, str]:
    """The variables that carry the CLI's global options (workspace, resolution) to what reads the environment."""
    return {"PROMPTSEG_WORKSPACE": str(settings.root), "PROMPTSEG_RESOLUTION": str(settings.resolution)}


OWNER_ONLY = 0o077  # the umask bits that keep group and others out


def prepare(settings: Settings) -> None:
    """Create the workspace folder (owner-only), make new files owner-only and set the process environment
    (existing PREFECT_HOME etc. are kept)."""
    os.umask(os.umask(OWNER_ONLY) | OWNER_ONLY)  # stricter bits already set stay set
    settings.root.mkdir(mode=0o700, parents=True, exist_ok=True)
    for key, value in {"PREFECT_HOME": str(settings.prefect_home), **DEFAULTS}.items():
        os.environ.setdefault(key, value)
    os.environ.update(in_force(settings))
