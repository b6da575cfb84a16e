"""The training stage's settings: the validation and test splits (`PROMPTSEG_VALIDATION`, `PROMPTSEG_TEST`: JSON
lists of task patterns, storage.splits; training never sees either) and where Ray Train keeps run folders and
checkpoints (`PROMPTSEG_RAY_STORAGE_URL`: a folder or s3://…; default in the workspace).
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from storage.splits import DEFAULT_TEST, DEFAULT_VALIDATION, Splits


class TrainingSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PROMPTSEG_", extra="ignore", populate_by_name=True)

    workspace: Path = Field(Path(".promptseg"), validation_alias="PROMPTSEG_WORKSPACE", description="the root's")
    validation: list[str] = list(DEFAULT_VALIDATION)
    test: list[str] = list(DEFAULT_TEST)
    ray_storage_url: str | None = None

    @property
    def splits(self) -> Splits:
        return Splits(validation=list(self.validation), test=list(self.test))

    @property
    def held_out(self) -> list[str]:
        """Every task pattern training never sees (validation and test)."""
        return self.splits.held_out

    @property
    def ray_storage(self) -> str:
        """Ray Train's run storage (checkpoints): a local folder or s3://bucket/prefix."""
        return self.ray_storage_url or str(self.workspace.expanduser().resolve() / "ray_results")

    @property
    def checkpoints_dir(self) -> Path:
        """Final checkpoints of finished runs, one folder per run name."""
        return self.workspace.expanduser().resolve() / "checkpoints"
