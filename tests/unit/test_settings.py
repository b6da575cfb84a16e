"""One root settings object, one sub-model per stage: the variables users set keep their names, each reaches its
stage's sub-model, and every stage's folders follow the root's workspace."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipelines.settings import Settings
from promptseg.registry.settings import RegistrySettings
from promptseg.serving.settings import ServeSettings


def test_each_variable_reaches_its_stage(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name, value in {
        "PROMPTSEG_WORKSPACE": str(tmp_path),
        "PROMPTSEG_SERVE_PORT": "9123",
        "PROMPTSEG_SERVE_API_KEY": "k",
        "PROMPTSEG_VALIDATION": '["liver*"]',
        "PROMPTSEG_TEST": '["center:center-c"]',
        "PROMPTSEG_CT_WINDOW": "[-100, 200]",
        "PROMPTSEG_NIGHTLY_CRON": "0 3 * * *",
        "PROMPTSEG_MODEL_NAME": "other",
        "MLFLOW_TRACKING_URI": "http://mlflow:5000",
        "RAY_ADDRESS": "ray://head:10001",
    }.items():
        monkeypatch.setenv(name, value)
    settings = Settings()
    assert settings.serve.port == 9123 and settings.serve.api_key.get_secret_value() == "k"
    assert settings.training.held_out == ["liver*", "center:center-c"] and settings.data.ct_window == [-100, 200]
    assert settings.training.splits.to_dict() == {"validation": ["liver*"], "test": ["center:center-c"]}
    assert settings.nightly.cron == "0 3 * * *" and settings.ray_address == "ray://head:10001"
    assert settings.registry.model_name == "other" and settings.registry.tracking_uri == "http://mlflow:5000"
    assert settings.serve.tasks_dir == tmp_path.resolve() / "serve_tasks"
    assert ServeSettings().port == 9123 and RegistrySettings().model_name == "other"  # a stage alone reads the same


def test_every_stage_follows_the_root_workspace(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PROMPTSEG_WORKSPACE", str(tmp_path / "from-env"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    settings = Settings(workspace=tmp_path / "given")
    root = (tmp_path / "given").resolve()
    assert settings.data.raw_dir == root / "raw" and settings.data.secret_path == root / "secret.key"
    assert settings.registry.tracking_uri == f"sqlite:///{root / 'mlflow.db'}"
    assert settings.training.ray_storage == str(root / "ray_results") and settings.serve.audit_dir == root / "audit"
    assert settings.store == str(root / "store.zarr")
