"""Segmentation jobs' state in the workspace (POST /v1/jobs), so that any replica answers for any job.

A job is a folder `<jobs dir>/<job id>/` holding `job.json` (its `JobInfo`, the request's form fields and the
uploads' form fields and file names; written aside and renamed, so a reader never sees half of it), the uploads under
`files/` until the job ends, `result.json` (the `SegmentResponse`) once it succeeded, and `cancel`, the marker any
replica writes to cancel it. Only the replica that accepted a job writes its `job.json`, and it touches the file every
`HEARTBEAT_S` while the job is queued or running.

Every reader applies the same rules (`JobStore.info`):
- a cancel marker makes the job cancelled, whatever its runner wrote before or after (a result is discarded);
- a queued or running job whose `job.json` was not touched for `stale_s` has failed (`job_lost`): the replica that
  accepted it stopped;
- a finished job (succeeded, failed, cancelled) last updated more than `retention_s` ago is deleted with its files
  by `sweep`, which runs on submit and poll, at most once per `SWEEP_INTERVAL_S` in a replica.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

from pydantic import BaseModel

from promptseg.serving.api_models import JobInfo, JobState, Problem, SegmentRequest

JOB_ID = re.compile(r"^[0-9a-f]{32}$")
HEARTBEAT_S = 5.0
SWEEP_INTERVAL_S = 60.0
FINISHED: frozenset[JobState] = frozenset({"succeeded", "failed", "cancelled"})


class UnknownJob(KeyError):
    """No job with this id (never submitted, deleted, or past its retention)."""

    def __init__(self, job_id: str) -> None:
        super().__init__(job_id)
        self.job_id = job_id


class JobNotSucceeded(Exception):
    """A job's result was asked for while it has none: not finished yet, failed or cancelled."""

    def __init__(self, info: JobInfo) -> None:
        super().__init__(info.job_id)
        self.info = info


class JobRecord(BaseModel):
    """`job.json`: the job as its runner last wrote it, and what it needs to run."""

    info: JobInfo
    request: dict[str, str]
    uploads: list[tuple[str, str]]


def _now() -> datetime:
    return datetime.now(UTC)


def _write_atomic(path: Path, data: bytes) -> None:
    with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".partial", delete=False) as handle:
        handle.write(data)
    os.replace(handle.name, path)


class JobStore:
    """The jobs folder every replica shares, with the retention and heartbeat rules of the module."""

    def __init__(self, folder: Path, retention_s: float, stale_s: float) -> None:
        self.folder, self.retention_s, self.stale_s = Path(folder), retention_s, stale_s
        self.folder.mkdir(parents=True, exist_ok=True)
        self._swept = float("-inf")

    def _dir(self, job_id: str) -> Path:
        if not JOB_ID.match(job_id):
            raise UnknownJob(job_id)
        return self.folder / job_id

    def upload_path(self, job_id: str, index: int) -> Path:
        return self._dir(job_id) / "files" / str(index)

    def create(self, request: SegmentRequest, uploads: list[tuple[str, str, BinaryIO]]) -> JobRecord:
        """A queued job: the uploads ((form field, file name, content)) saved, then its `job.json`."""
        job_id = uuid.uuid4().hex
        for index, (_, _, content) in enumerate(uploads):
            path = self.upload_path(job_id, index)
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("wb") as handle:
                shutil.copyfileobj(content, handle)
        now = _now()
        info = JobInfo(job_id=job_id, state="queued", created=now, updated=now)
        record = JobRecord(info=info, request=request.form_fields(), uploads=[(f, n) for f, n, _ in uploads])
        self.write(record)
        return record

    def write(self, record: JobRecord) -> None:
        """Write the job's state (FileNotFoundError once the job was deleted)."""
        _write_atomic(self._dir(record.info.job_id) / "job.json", record.model_dump_json().encode())

    def update(self, record: JobRecord, state: JobState, error: Problem | None = None) -> JobRecord:
        """The record in `state` since now, written."""
        info = record.info.model_copy(update={"state": state, "updated": _now(), "error": error})
        updated = record.model_copy(update={"info": info})
        self.write(updated)
        return updated

    def heartbeat(self, job_id: str) -> None:
        os.utime(self._dir(job_id) / "job.json")

    def drop_uploads(self, job_id: str) -> None:
        shutil.rmtree(self._dir(job_id) / "files", ignore_errors=True)

    def record(self, job_id: str) -> JobRecord:
        try:
            return JobRecord.model_validate_json((self._dir(job_id) / "job.json").read_bytes())
        except FileNotFoundError as error:
            raise UnknownJob(job_id) from error

    def cancel_requested(self, job_id: str) -> bool:
        return (self._dir(job_id) / "cancel").exists()

    def info(self, job_id: str) -> JobInfo:
        """The job's state by the module's rules."""
        folder = self._dir(job_id)
        info = self.record(job_id).info
        try:
            cancelled = (folder / "cancel").stat().st_mtime
        except FileNotFoundError:
            cancelled = None
        if cancelled is not None:
            return info.model_copy(
                update={"state": "cancelled", "updated": datetime.fromtimestamp(cancelled, UTC), "error": None}
            )
        if info.state in FINISHED:
            return info
        try:
            beat = (folder / "job.json").stat().st_mtime
        except FileNotFoundError as error:
            raise UnknownJob(job_id) from error
        if time.time() - beat <= self.stale_s:
            return info
        lost = Problem.of(
            500, "job_lost", f"the replica running this job stopped (no heartbeat for over {self.stale_s:g} s)"
        )
        return info.model_copy(update={"state": "failed", "updated": datetime.fromtimestamp(beat, UTC), "error": lost})

    def save_result(self, job_id: str, response_json: bytes) -> None:
        _write_atomic(self._dir(job_id) / "result.json", response_json)

    def result(self, job_id: str) -> bytes:
        """The `SegmentResponse` JSON of a succeeded job; `JobNotSucceeded` for any other state."""
        info = self.info(job_id)
        if info.state != "succeeded":
            raise JobNotSucceeded(info)
        return (self._dir(job_id) / "result.json").read_bytes()

    def cancel(self, job_id: str) -> JobInfo:
        """Write the job's cancel marker; returns its state, cancelled from now on."""
        (self._dir(job_id) / "cancel").touch()
        return self.info(job_id)

    def delete(self, job_id: str) -> None:
        self.record(job_id)  # UnknownJob when there is none
        shutil.rmtree(self._dir(job_id), ignore_errors=True)

    def sweep(self, now: bool = False) -> int:
        """Delete finished jobs past the retention, and folders left without a state (a replica that stopped while
        saving uploads) as old; at most once per `SWEEP_INTERVAL_S` unless `now`. Returns how many it deleted."""
        if not now and time.monotonic() - self._swept < SWEEP_INTERVAL_S:
            return 0
        self._swept, swept = time.monotonic(), 0
        if not self.folder.is_dir():
            return 0
        now_utc = _now()
        for folder in self.folder.iterdir():
            if not JOB_ID.match(folder.name):
                continue
            with contextlib.suppress(FileNotFoundError):  # deleted meanwhile
                try:
                    info = self.info(folder.name)
                    expired = info.state in FINISHED and (now_utc - info.updated).total_seconds() > self.retention_s
                except UnknownJob:
                    expired = time.time() - folder.stat().st_mtime > self.retention_s
                if expired:
                    shutil.rmtree(folder, ignore_errors=True)
                    swept += 1
        return swept
