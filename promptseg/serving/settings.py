"""The serving stage's settings: `PROMPTSEG_SERVE_*` variables (bind address, replicas and their resources,
request limits and per-request decoding budgets, batching, the task-encoding cache, the API key, segmentation jobs)
and the workspace folders every replica shares.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from promptseg.inference.budget import Limits


class ServeSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PROMPTSEG_SERVE_", extra="ignore", populate_by_name=True)

    workspace: Path = Field(Path(".promptseg"), validation_alias="PROMPTSEG_WORKSPACE", description="the root's")
    host: str = "127.0.0.1"
    port: int = 8000
    api_key: SecretStr | None = None
    replicas: int = 1
    cpus_per_replica: float = 0.25
    gpus_per_replica: float = 0.0
    max_ongoing_requests: int = Field(
        64, ge=1, description="requests Ray Serve hands a replica at once, uploads still arriving included"
    )
    max_queued_requests: int = Field(32, ge=-1, description="requests Serve queues beyond those (-1: no limit)")
    work_slots: int = Field(8, ge=1, description="requests a replica decodes and segments at once")
    max_waiting: int = Field(16, ge=0, description="requests that may wait for a work slot; more get 503")
    retry_after_s: int = Field(5, ge=1, description="the Retry-After of a 503 answer")
    body_timeout_s: float = Field(120.0, gt=0, description="a request body must arrive within this, else 408")
    max_batch_size: int = 8
    batch_wait_ms: float = 2.0
    max_body_mb: float = 256.0
    max_files: int = Field(256, ge=1, description="files one request may carry")
    max_decoded_mb: float = Field(
        1024.0, gt=0, description="bytes one request's files and its volume's segmentation may hold"
    )
    job_max_decoded_mb: float = Field(6144.0, gt=0, description="the same for a job (fewer run at once)")
    max_pixels: int = Field(128 << 20, ge=1, description="pixels and voxels over all files of one request")
    max_slices: int = Field(2048, ge=1, description="slices along any axis of one volume")
    max_labels: int = Field(32, ge=1, description="label values one request may segment or register")
    request_timeout_s: float = Field(120.0, gt=0, description="seconds of work one POST /v1/segment or task may take")
    job_timeout_s: float = Field(3600.0, gt=0, description="seconds of work one job may take")
    cache_mb: float = Field(256.0, gt=0, description="memory of the task encodings a replica keeps (LRU)")
    jobs_per_replica: int = Field(2, ge=1, description="jobs a replica runs at once; later ones wait queued")
    job_retention_s: float = Field(86400.0, gt=0, description="finished jobs older than this are deleted")
    task_retention_days: float = Field(
        90.0, gt=0, description="registered tasks not segmented against for this long are purged"
    )
    audit_retention_days: float = Field(30.0, gt=0, description="audit logs older than this are purged")
    job_stale_s: float = Field(120.0, gt=0, description="an unfinished job without a heartbeat this long has failed")

    @property
    def limits(self) -> Limits:
        """The per-request decoding budget's limits."""
        return Limits(
            self.max_files,
            int(self.max_decoded_mb * 2**20),
            self.max_pixels,
            self.max_slices,
            self.max_labels,
            self.request_timeout_s,
        )

    @property
    def job_limits(self) -> Limits:
        """A job's limits: the request's, with the job's byte and time budgets."""
        return replace(
            self.limits, max_decoded_bytes=int(self.job_max_decoded_mb * 2**20), max_seconds=self.job_timeout_s
        )

    @property
    def tasks_dir(self) -> Path:
        """Tasks registered with the endpoint (their prompts), shared by every replica."""
        return self.workspace.expanduser().resolve() / "serve_tasks"

    @property
    def jobs_dir(self) -> Path:
        """Segmentation jobs (POST /v1/jobs): state, uploads and results, shared by every replica."""
        return self.workspace.expanduser().resolve() / "serve_jobs"

    @property
    def audit_dir(self) -> Path:
        """The endpoint's audit log (one JSON line per request, no patient data)."""
        return self.workspace.expanduser().resolve() / "audit"

    @property
    def state_file(self) -> Path:
        """The model version the replicas serve (every replica checks it before each request)."""
        return self.workspace.expanduser().resolve() / "services" / "serve_model.json"
