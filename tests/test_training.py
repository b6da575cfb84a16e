"""Training on Ray (2 workers), MLflow tracking, registry round trip and the learned held-out result.

All tests share the one model trained per session (`trained`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from mlflow import MlflowClient

from pipelines import stages
from promptseg.checkpoint import load_model
from promptseg.registry import CHALLENGER, load_version
from promptseg.settings import Settings


def test_training_reports_decreasing_loss(settings: Settings, trained: dict) -> None:
    history = MlflowClient(settings.tracking_uri).get_metric_history(trained["run_id"], "loss")
    losses = [m.value for m in sorted(history, key=lambda m: m.step)]
    assert len(losses) >= 6
    assert np.mean(losses[-2:]) < 0.85 * np.mean(losses[:2])


def test_run_records_lineage_and_version_is_the_challenger(settings: Settings, trained: dict) -> None:
    client = MlflowClient(settings.tracking_uri)
    run = client.get_run(trained["run_id"])
    assert run.data.params["num_workers"] == "2" and run.data.params["resolution"] == str(settings.resolution)
    assert len(run.data.tags["store_snapshot_id"]) == 16 and run.data.tags["held_out"] == "kidney*"
    version = client.get_model_version_by_alias(settings.model_name, CHALLENGER)
    assert str(version.version) == trained["version"]
    assert version.tags["store_snapshot_id"] == run.data.tags["store_snapshot_id"]
    artifacts = {a.path for a in client.list_artifacts(trained["run_id"], "checkpoint")}
    assert {"checkpoint/model.safetensors", "checkpoint/model_config.json"} <= artifacts


def test_registered_version_loads_back_with_identical_outputs(settings: Settings, trained: dict) -> None:
    loaded = load_version(settings.tracking_uri, settings.model_name, trained["version"])
    reference = load_model(Path(trained["checkpoint"]))
    assert loaded.network.config == reference.config and loaded.model_card["resolution"] == settings.resolution
    r = settings.resolution
    generator = torch.Generator().manual_seed(0)
    inputs = (
        torch.rand(1, 3, 1, r, r, generator=generator),
        (torch.rand(1, 3, 1, r, r, generator=generator) > 0.5).float(),
        torch.rand(1, 2, 1, r, r, generator=generator),
    )
    with torch.no_grad():
        assert torch.equal(loaded.network(*inputs), reference(*inputs))


def test_model_beats_the_mean_prompt_baseline_on_held_out_structures(settings: Settings, trained: dict) -> None:
    """The learning test: kidneys were never trained on; prompts and queries come from different cases."""
    result = stages.evaluate(settings, trained["version"])
    report = Path(result["report_dir"])
    assert (report / "results.md").exists() and (report / "dice_vs_n.png").exists()
    assert any((report / "overlays").glob("*.png"))
    rows = __import__("json").loads((report / "results.json").read_text())["rows"]
    synthetic = [r for r in rows if r["dataset"].startswith("synth") and r["n_prompts"] >= 4]
    model, baseline = np.mean([r["promptseg"] for r in synthetic]), np.mean([r["mean_prompt_mask"] for r in synthetic])
    assert model > 0.5, f"held-out Dice {model:.3f}"
    assert model > baseline + 0.15, f"held-out Dice {model:.3f} vs mean-prompt-mask {baseline:.3f}"
    tags = MlflowClient(settings.tracking_uri).get_model_version(settings.model_name, trained["version"]).tags
    assert float(tags["heldout_dice_promptseg_n8"]) == round(result["scores"]["dice_promptseg_n8"], 4)
