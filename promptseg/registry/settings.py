"""The registry's settings: where MLflow tracks runs and holds model versions, and the names used there.

`PROMPTSEG_MODEL_NAME`, `PROMPTSEG_EXPERIMENT`, and `MLFLOW_TRACKING_URI` (or `PROMPTSEG_MLFLOW_TRACKING_URI`); with
no tracking URI, an SQLite database and an artifact folder in the workspace.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class RegistrySettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PROMPTSEG_", extra="ignore", populate_by_name=True)

    workspace: Path = Field(Path(".promptseg"), validation_alias="PROMPTSEG_WORKSPACE", description="the root's")
    model_name: str = "promptseg"
    experiment: str = "promptseg"
    mlflow_tracking_uri: str | None = Field(
        default=None, validation_alias=AliasChoices("PROMPTSEG_MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_URI")
    )

    @property
    def tracking_uri(self) -> str:
        return self.mlflow_tracking_uri or f"sqlite:///{self.workspace.expanduser().resolve() / 'mlflow.db'}"

    @property
    def artifact_root(self) -> Path:
        return self.workspace.expanduser().resolve() / "mlartifacts"
