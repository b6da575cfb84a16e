"""Checkpoint folders of a network: weights (`model.safetensors`) + model config (`model_config.json`).

The registry logs exactly these two files with every version; training adds its own state beside them
(promptseg.training.trainer_state).
"""

from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import load_file, save_file
from torch import nn

from promptseg.nets.factory import build_model, config_from_dict

WEIGHTS = "model.safetensors"
CONFIG = "model_config.json"


def save_model(model: nn.Module, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}, str(folder / WEIGHTS))
    (folder / CONFIG).write_text(json.dumps(model.config.to_dict(), indent=2))


def load_model(folder: Path) -> nn.Module:
    """Rebuild the network through the factory and load its weights (no pickled objects)."""
    model = build_model(config_from_dict(json.loads((folder / CONFIG).read_text())))
    model.load_state_dict(load_file(str(folder / WEIGHTS)))
    return model.eval()
