"""The platform's one settings object: `PROMPTSEG_*` variables plus the standard RAY_ADDRESS and MLFLOW_TRACKING_URI.

The root holds what every stage shares (the workspace folder, the task store and its resolution, the Ray address)
and one sub-model per stage, each read from its own variables and handed to its stage alone:

| sub-model | stage | variables (PROMPTSEG_ + …) |
|---|---|---|
| `data` (`DataSettings`) | ingest, preprocess | AXES, EMPTY_FRACTION, CT_WINDOW, DASK_ADDRESS, DASK_WORKERS |
| `training` (`promptseg.training.settings`) | training | VALIDATION, TEST, RAY_STORAGE_URL |
| `registry` (`promptseg.registry.settings`) | registry, run logs | MODEL_NAME, EXPERIMENT; and MLFLOW_TRACKING_URI |
| `serve` (`promptseg.serving.settings`) | serving | SERVE_* |
| `nightly` (`NightlySettings`) | the scheduled pipeline | NIGHTLY_* |

On one machine everything lives under the workspace folder (default ./.promptseg): the task store, the MLflow
SQLite database and artifact folder, Ray Train's storage, Prefect's home and the records of running services.
Pointing the same settings at a Ray cluster, an MLflow server and an s3:// store runs the same code on a cluster.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import AliasChoices, Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from promptseg.registry.settings import RegistrySettings
from promptseg.serving.settings import ServeSettings
from promptseg.training.settings import TrainingSettings


class DataSettings(BaseSettings):
    """How raw datasets become the task store: slicing, CT window, and the Dask cluster preprocessing runs on."""

    model_config = SettingsConfigDict(env_prefix="PROMPTSEG_", extra="ignore", populate_by_name=True)

    workspace: Path = Field(Path(".promptseg"), validation_alias="PROMPTSEG_WORKSPACE", description="the root's")
    axes: list[int] = [0, 1, 2]
    empty_fraction: float = 0.1
    ct_window: list[float] | None = None
    dask_address: str | None = None
    dask_workers: int = 2

    @property
    def raw_dir(self) -> Path:
        """Ingest records (one JSON per dataset) live here."""
        return self.workspace.expanduser().resolve() / "raw"

    @property
    def secret_path(self) -> Path:
        """The workspace's key for case pseudonyms (storage.privacy)."""
        return self.workspace.expanduser().resolve() / "secret.key"


class NightlySettings(BaseSettings):
    """The scheduled nightly deployment: when, on which Prefect work pool, and where failures are reported."""

    model_config = SettingsConfigDict(env_prefix="PROMPTSEG_NIGHTLY_", extra="ignore")

    cron: str = "0 2 * * *"
    timezone: str = "UTC"
    work_pool: str = "promptseg-process"
    webhook_url: str | None = None


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PROMPTSEG_", extra="ignore")

    workspace: Path = Path(".promptseg")
    store_url: str | None = None
    resolution: int = 256
    ray_address: str | None = Field(default=None, validation_alias=AliasChoices("PROMPTSEG_RAY_ADDRESS", "RAY_ADDRESS"))
    data: DataSettings = Field(default_factory=DataSettings)
    training: TrainingSettings = Field(default_factory=TrainingSettings)
    registry: RegistrySettings = Field(default_factory=RegistrySettings)
    serve: ServeSettings = Field(default_factory=ServeSettings)
    nightly: NightlySettings = Field(default_factory=NightlySettings)

    @model_validator(mode="after")
    def _share_workspace(self) -> Settings:
        """Every stage's folders lie in this workspace, whatever its sub-model read on its own."""
        for name in ("data", "training", "registry", "serve"):
            setattr(self, name, getattr(self, name).model_copy(update={"workspace": self.root}))
        return self

    @property
    def root(self) -> Path:
        return self.workspace.expanduser().resolve()

    @property
    def store(self) -> str:
        return self.store_url or str(self.root / "store.zarr")

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
