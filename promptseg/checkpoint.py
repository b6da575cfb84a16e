"""Checkpoint folders: model weights (safetensors) + model config (JSON), plus trainer state for resuming.

The registry reads only `model.safetensors` and `model_config.json`; `trainer_state.pt` (optimizer, scheduler,
step, random states, sampler state) is for continuing a run exactly and holds tensors and plain data only.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from promptseg.factory import build_model, config_from_dict

WEIGHTS = "model.safetensors"
CONFIG = "model_config.json"
TRAINER_STATE = "trainer_state.pt"


def save_model(model: nn.Module, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}, str(folder / WEIGHTS))
    (folder / CONFIG).write_text(json.dumps(model.config.to_dict(), indent=2))


def load_model(folder: Path) -> nn.Module:
    """Rebuild the network through the factory and load its weights (no pickled objects)."""
    model = build_model(config_from_dict(json.loads((folder / CONFIG).read_text())))
    model.load_state_dict(load_file(str(folder / WEIGHTS)))
    return model.eval()


def save_trainer_state(state: dict, folder: Path) -> None:
    torch.save(state, folder / TRAINER_STATE)


def load_trainer_state(folder: Path) -> dict:
    return torch.load(folder / TRAINER_STATE, weights_only=True)
