"""The platform's one settings model: `PROMPTSEG_*` variables plus the standard RAY_ADDRESS and MLFLOW_TRACKING_URI.

On one machine everything lives under the workspace folder (default ./.promptseg): the task store, the MLflow
SQLite database and artifact folder, Ray Train's storage, Prefect's home and the records of running services.
Pointing the same settings at a Ray cluster, an MLflow server and an s3:// store runs the same code on a cluster.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PROMPTSEG_", extra="ignore")

    workspace: Path = Path(".promptseg")
    store_url: str | None = None
    ray_storage_url: str | None = None
    resolution: int = 256
    model_name: str = "promptseg"
    experiment: str = "promptseg"
    held_out: list[str] = ["kidney*"]
    axes: list[int] = [0, 1, 2]
    empty_fraction: float = 0.1
    ct_window: list[float] | None = None
    dask_address: str | None = None
    dask_workers: int = 2
    serve_host: str = "127.0.0.1"
    serve_port: int = 8000
    serve_api_key: SecretStr | None = None
    serve_replicas: int = 1
    serve_cpus_per_replica: float = 0.25
    serve_gpus_per_replica: float = 0.0
    serve_max_ongoing_requests: int = 8
    serve_max_queued_requests: int = 32
    serve_max_batch_size: int = 8
    serve_batch_wait_ms: float = 2.0
    serve_max_body_mb: float = 256.0
    serve_max_volume_mb: float = 1024.0
    serve_cache_size: int = 128
    nightly_cron: str = "0 2 * * *"
    nightly_timezone: str = "UTC"
    nightly_work_pool: str = "promptseg-process"
    nightly_webhook_url: str | None = None
    ray_address: str | None = Field(default=None, validation_alias=AliasChoices("PROMPTSEG_RAY_ADDRESS", "RAY_ADDRESS"))
    mlflow_tracking_uri: str | None = Field(
        default=None, validation_alias=AliasChoices("PROMPTSEG_MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_URI")
    )

    @property
    def root(self) -> Path:
        return self.workspace.expanduser().resolve()

    @property
    def store(self) -> str:
        return self.store_url or str(self.root / "store.zarr")

    @property
    def tracking_uri(self) -> str:
        return self.mlflow_tracking_uri or f"sqlite:///{self.root / 'mlflow.db'}"

    @property
    def artifact_root(self) -> Path:
        return self.root / "mlartifacts"

    @property
    def raw_dir(self) -> Path:
        """Ingest records (one JSON per dataset) live here."""
        return self.root / "raw"

    @property
    def secret_path(self) -> Path:
        """The workspace's key for case pseudonyms (storage.privacy)."""
        return self.root / "secret.key"

    @property
    def ray_storage(self) -> str:
        """Ray Train's run storage (checkpoints): a local folder or s3://bucket/prefix."""
        return self.ray_storage_url or str(self.root / "ray_results")

    @property
    def serve_tasks_dir(self) -> Path:
        """Tasks registered with the endpoint (their prompts), shared by every replica."""
        return self.root / "serve_tasks"

    @property
    def audit_dir(self) -> Path:
        """The endpoint's audit log (one JSON line per request, no patient data)."""
        return self.root / "audit"

    @property
    def prefect_home(self) -> Path:
        return self.root / "prefect"

    @property
    def reports_dir(self) -> Path:
        return self.root / "reports"

    @property
    def services_dir(self) -> Path:
        """Records of services this workspace started (Ray head, Serve endpoint)."""
        return self.root / "services"
