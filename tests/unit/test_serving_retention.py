"""The endpoint's retention (`promptseg serve purge`, also the nightly retention step): registered tasks unused past
their retention, finished jobs past theirs and old audit logs are deleted; a task segmented against recently, a
running job and today's audit log stay."""

from __future__ import annotations

import io
import os
import time
from pathlib import Path

import numpy as np

from pipelines.retention import purge_serving
from promptseg.serving.api_models import SegmentRequest
from promptseg.serving.job_store import JobStore
from promptseg.serving.served_tasks import ServedTasks
from promptseg.serving.settings import ServeSettings

DAY = 86400


def _task(tasks: ServedTasks, seed: int) -> str:
    image = np.random.default_rng(seed).integers(0, 255, (20, 20), dtype=np.uint8)
    return tasks.put([image], {1: [(image > 128).astype(np.uint8)]}, "MR")


def _age(path: Path, days: float) -> None:
    then = time.time() - days * DAY
    os.utime(path, (then, then))


def test_purge_deletes_what_is_past_each_retention_and_keeps_the_rest(tmp_path: Path) -> None:
    serve = ServeSettings(workspace=tmp_path, task_retention_days=30, audit_retention_days=10, job_retention_s=DAY)
    tasks = ServedTasks(serve.tasks_dir)
    unused, used, registered_again = _task(tasks, 0), _task(tasks, 1), _task(tasks, 2)
    for task_id in (unused, used, registered_again):
        _age(serve.tasks_dir / f"{task_id}.npz", 40)
    tasks.describe(used)  # segmented against today
    _task(tasks, 2)  # the same prompts registered again today

    jobs = JobStore(serve.jobs_dir, serve.job_retention_s, serve.job_stale_s)
    request = SegmentRequest(labels=[1])
    finished, running = (jobs.create(request, [("queries", "q.npy", io.BytesIO(b"q"))]) for _ in range(2))
    jobs.update(finished, "succeeded")
    aged = jobs.record(finished.info.job_id)
    jobs.write(
        aged.model_copy(update={"info": aged.info.model_copy(update={"updated": aged.info.updated.replace(year=2000)})})
    )
    jobs.update(running, "running")

    serve.audit_dir.mkdir(parents=True)
    old_log, new_log = serve.audit_dir / "audit-20000101.jsonl", serve.audit_dir / "audit-20261202.jsonl"
    for log in (old_log, new_log):
        log.write_text("{}\n")
    _age(old_log, 11)

    purged = purge_serving(serve)
    assert (purged.tasks, purged.jobs, purged.audit_logs) == (1, 1, 1)
    assert sorted(header.task_id for header in tasks.headers()) == sorted([used, registered_again])
    assert not (serve.jobs_dir / finished.info.job_id).exists() and jobs.info(running.info.job_id).state == "running"
    assert not old_log.exists() and new_log.exists()
    assert purge_serving(serve) == purged.model_copy(update={"tasks": 0, "jobs": 0, "audit_logs": 0})
