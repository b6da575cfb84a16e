"""Versions registered before the package split still load and predict: their logged pyfunc code imports
`promptseg.checkpoint.load_model`, a path the split moved (tests/fixtures/README.md says how the fixture was made)."""

from __future__ import annotations

import shutil
from pathlib import Path

import mlflow
import torch

from pipelines.settings import Settings
from promptseg.registry.versions import load_version

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


def test_a_version_logged_by_the_pre_split_tree_loads_and_gives_its_logits(settings: Settings, tmp_path: Path) -> None:
    source = shutil.copytree(FIXTURES / "pre_split_model", tmp_path / "model")
    assert "from promptseg.checkpoint import load_model" in (source / "pyfunc_model.py").read_text()
    client = mlflow.MlflowClient(settings.registry.tracking_uri)
    client.create_registered_model("promptseg-pre-split")
    version = client.create_model_version("promptseg-pre-split", source=str(source)).version

    loaded = load_version(settings.registry.tracking_uri, "promptseg-pre-split", str(version))

    recorded = torch.load(FIXTURES / "pre_split_io.pt", weights_only=True)
    with torch.inference_mode():
        logits = loaded.network(recorded["prompt_images"], recorded["prompt_masks"], recorded["queries"])
    torch.testing.assert_close(logits, recorded["logits"])
    assert loaded.model_card["resolution"] == 32
