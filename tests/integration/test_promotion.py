"""Registry round trip and the promotion gate, on a registered model of their own (`promptseg-gate`), so the
session's served `promptseg` model is left alone. The session's trained model plays the better version and a
network with the same configuration but untrained weights plays the worse one."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch

from pipelines import promotion, stages
from pipelines.outcomes import TrainingOutcome
from pipelines.settings import Settings
from promptseg.nets.checkpoint import load_model, save_model
from promptseg.nets.factory import build_model
from promptseg.registry.versions import CHALLENGER, CHAMPION, alias_history, move_alias, register_checkpoint


@pytest.fixture(scope="module")
def gate_settings(settings: Settings) -> Settings:
    return settings.model_copy(
        update={"registry": settings.registry.model_copy(update={"model_name": "promptseg-gate"})}
    )


@pytest.fixture(scope="module")
def untrained_checkpoint(settings: Settings, trained: TrainingOutcome) -> Path:
    folder = settings.root / "checkpoints" / "untrained"
    torch.manual_seed(1)
    save_model(build_model(load_model(trained.checkpoint_dir).config), folder)
    return folder


def _register(gate_settings: Settings, checkpoint: str | Path, trained: TrainingOutcome) -> str:
    tracking, name = gate_settings.registry.tracking_uri, gate_settings.registry.model_name
    return register_checkpoint(Path(checkpoint), trained.run_id, tracking, name)


def test_the_challenger_loads_by_alias_uri_with_identical_outputs(
    gate_settings: Settings, trained: TrainingOutcome
) -> None:
    version = _register(gate_settings, trained.checkpoint_dir, trained)
    mlflow.set_tracking_uri(gate_settings.registry.tracking_uri)
    model = mlflow.pyfunc.load_model(f"models:/{gate_settings.registry.model_name}@{CHALLENGER}")
    r = gate_settings.resolution
    rng = np.random.default_rng(0)
    inputs = {
        "prompt_images": rng.random((1, 3, 1, r, r), dtype=np.float32),
        "prompt_masks": (rng.random((1, 3, 1, r, r)) > 0.5).astype(np.float32),
        "queries": rng.random((1, 2, 1, r, r), dtype=np.float32),
    }
    reference = load_model(trained.checkpoint_dir)
    with torch.inference_mode():
        expected = reference(**{k: torch.from_numpy(v) for k, v in inputs.items()}).numpy()
    assert np.array_equal(model.predict(inputs), expected)
    assert (
        alias_history(gate_settings.registry.tracking_uri, gate_settings.registry.model_name, CHALLENGER)[-1][
            "to_version"
        ]
        == version
    )


def test_the_gate_promotes_without_a_champion_then_only_a_better_challenger(
    gate_settings: Settings, trained: TrainingOutcome, untrained_checkpoint: Path
) -> None:
    tracking, name = gate_settings.registry.tracking_uri, gate_settings.registry.model_name
    worse = _register(gate_settings, untrained_checkpoint, trained)
    mlflow.MlflowClient(tracking).delete_registered_model_alias(name, CHAMPION)  # start with no champion
    first = stages.promote(gate_settings)
    assert first.promoted and first.champion == worse and first.reason == "no champion yet"

    better = _register(gate_settings, trained.checkpoint_dir, trained)
    accepted = stages.promote(gate_settings, margin=0.05)
    assert accepted.promoted and accepted.champion == better
    assert accepted.challenger_dice >= accepted.champion_dice + 0.05

    worse_again = _register(gate_settings, untrained_checkpoint, trained)
    refused = stages.promote(gate_settings)
    assert not refused.promoted and refused.champion == better
    assert refused.challenger_dice < refused.champion_dice
    assert refused.store_snapshot_id == accepted.store_snapshot_id
    # the champion's scores were measured by the previous gate under the same spec and snapshot: reused, not re-run
    assert refused.reused == {"challenger": False, "champion": True}
    assert refused.champion_dice == pytest.approx(accepted.challenger_dice, abs=1e-6)
    assert mlflow.MlflowClient(tracking).get_model_version_by_alias(name, CHAMPION).version == int(better)

    moves = alias_history(tracking, name, CHAMPION)
    assert [(m["from_version"], m["to_version"]) for m in moves[-2:]] == [(None, worse), (worse, better)]
    assert moves[-1]["scores"] == {"challenger_dice": accepted.challenger_dice, "champion_dice": accepted.champion_dice}
    assert moves[-1]["user"] and moves[-1]["time"] and "≥" in moves[-1]["reason"]
    assert worse_again not in {m["to_version"] for m in moves}


def test_pin_and_rollback_are_recorded(gate_settings: Settings, trained: TrainingOutcome) -> None:
    tracking, name = gate_settings.registry.tracking_uri, gate_settings.registry.model_name
    current = _register(gate_settings, trained.checkpoint_dir, trained)
    move_alias(tracking, name, CHAMPION, current, reason="set up for this test")
    pinned = stages.promote(gate_settings, version="1")
    assert pinned.champion == "1" and pinned.champion_before == current
    back = promotion.rollback(gate_settings)
    assert back.champion == current
    moves = alias_history(tracking, name, CHAMPION)
    assert [m["reason"] for m in moves[-2:]] == ["pinned by hand", "rollback from v1"]
    assert mlflow.MlflowClient(tracking).get_model_version_by_alias(name, CHAMPION).version == int(current)


def test_versions_trained_under_different_splits_are_not_compared(
    gate_settings: Settings, trained: TrainingOutcome
) -> None:
    tracking, name = gate_settings.registry.tracking_uri, gate_settings.registry.model_name
    challenger = _register(gate_settings, trained.checkpoint_dir, trained)
    other = json.dumps({"validation": ["liver*"], "test": []})
    mlflow.MlflowClient(tracking).set_model_version_tag(name, challenger, "splits", other)
    with pytest.raises(promotion.PromotionError, match="not comparable"):
        stages.promote(gate_settings)
