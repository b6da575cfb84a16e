"""Segmentation jobs' state in the workspace, read as any replica reads it: a cancel marker wins, a job without a
heartbeat reads as failed, finished jobs past the retention are swept (the HTTP side is in
tests/integration/test_serving_jobs.py)."""

from __future__ import annotations

import io
import os
import time
from pathlib import Path

import pytest

from promptseg.serving.api_models import SegmentRequest
from promptseg.serving.job_store import JobNotSucceeded, JobStore, UnknownJob


def _submitted(store: JobStore) -> str:
    uploads = [("volume", "ct.nii.gz", io.BytesIO(b"volume bytes")), ("prompt_images", "p.npy", io.BytesIO(b"p"))]
    record = store.create(SegmentRequest(labels=[1, 3], threshold=0.4), uploads)
    return record.info.job_id


def test_a_job_is_saved_and_read_back_by_another_replica(tmp_path: Path) -> None:
    job_id = _submitted(JobStore(tmp_path, 60, 60))
    other = JobStore(tmp_path, 60, 60)
    record = other.record(job_id)
    assert other.info(job_id).state == "queued"
    assert record.uploads == [("volume", "ct.nii.gz"), ("prompt_images", "p.npy")]
    assert SegmentRequest.model_validate(record.request) == SegmentRequest(labels=[1, 3], threshold=0.4)
    assert other.upload_path(job_id, 0).read_bytes() == b"volume bytes"
    with pytest.raises(JobNotSucceeded):
        other.result(job_id)
    other.save_result(job_id, b'{"done": true}')
    other.update(record, "succeeded")
    assert other.result(job_id) == b'{"done": true}' and not list(tmp_path.rglob("*.partial"))
    for unknown in ("0" * 32, "../etc", "nope"):
        with pytest.raises(UnknownJob):
            other.info(unknown)


def test_a_cancel_marker_wins_over_what_the_runner_writes(tmp_path: Path) -> None:
    store = JobStore(tmp_path, 60, 60)
    job_id = _submitted(store)
    assert store.cancel(job_id).state == "cancelled"
    store.save_result(job_id, b"{}")
    store.update(store.record(job_id), "succeeded")  # the runner finished as the cancel came
    with pytest.raises(JobNotSucceeded) as refused:
        store.result(job_id)
    assert refused.value.info.state == "cancelled"


def test_an_unfinished_job_without_a_heartbeat_reads_as_failed(tmp_path: Path) -> None:
    store = JobStore(tmp_path, 60, stale_s=30)
    job_id = _submitted(store)
    store.update(store.record(job_id), "running")
    assert store.info(job_id).state == "running"
    old = time.time() - 31
    os.utime(tmp_path / job_id / "job.json", (old, old))
    info = store.info(job_id)
    assert info.state == "failed" and info.error.code == "job_lost" and info.error.status == 500
    store.heartbeat(job_id)
    assert store.info(job_id).state == "running"


def test_finished_jobs_past_the_retention_are_swept(tmp_path: Path) -> None:
    store = JobStore(tmp_path, retention_s=3600, stale_s=60)
    finished, running = _submitted(store), _submitted(store)
    record = store.record(finished)
    store.update(record, "failed")
    aged = record.info.model_copy(update={"state": "failed", "updated": record.info.updated.replace(year=2000)})
    store.write(record.model_copy(update={"info": aged}))
    store.sweep()
    assert not (tmp_path / finished).exists() and store.info(running).state == "queued"
    with pytest.raises(UnknownJob):
        store.info(finished)
