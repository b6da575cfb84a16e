"""The Prefect deployment of `nightly` on a cron schedule (`promptseg schedule`).

`register_nightly` creates (or updates) the process work pool and the deployment `nightly/nightly` on the Prefect
API the environment points at (PREFECT_API_URL): the flow is loaded from this project's folder by a process worker
(`prefect worker start --pool <pool>`), runs at `cron` in `timezone` (default 02:00 UTC) with the given
`NightlyConfig` as parameters, and at most one run of it is active at a time (the deployment's concurrency limit,
besides the flow's own global limit). Its runs get `env` as process variables: the settings in force where it was
registered (pipelines.environment.in_force), so they use that workspace and resolution, not the worker's.
"""

from __future__ import annotations

from contextlib import suppress
from pathlib import Path

from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import WorkPoolCreate
from prefect.exceptions import ObjectAlreadyExists
from prefect.schedules import Cron

from pipelines.nightly import NightlyConfig, nightly

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEPLOYMENT = "nightly"


def ensure_process_pool(name: str) -> None:
    with get_client(sync_client=True) as client, suppress(ObjectAlreadyExists):
        client.create_work_pool(WorkPoolCreate(name=name, type="process"))


def register_nightly(cron: str, timezone: str, work_pool: str, config: NightlyConfig, env: dict[str, str]) -> dict:
    """Register the scheduled deployment, its runs with `env` set; returns its id, schedule, pool and variables."""
    ensure_process_pool(work_pool)
    source = nightly.from_source(str(PROJECT_ROOT), entrypoint="pipelines/nightly.py:nightly")
    deployment_id = source.deploy(
        name=DEPLOYMENT,
        work_pool_name=work_pool,
        schedule=Cron(cron, timezone=timezone),
        concurrency_limit=1,
        parameters={"config": config.model_dump()},
        job_variables={"env": env},
        description="ingest → preprocess → train → gate → roll out → retention",
        print_next_steps=False,
    )
    return {
        "deployment": f"nightly/{DEPLOYMENT}",
        "id": str(deployment_id),
        "cron": cron,
        "timezone": timezone,
        "work_pool": work_pool,
        "env": env,
        "start_worker": f"prefect worker start --pool {work_pool}",
    }
