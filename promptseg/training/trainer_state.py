"""The trainer's state saved beside a checkpoint's weights: `trainer_state.pt` (optimizer, scheduler, step, every
rank's random states and sampler state), for continuing a run exactly; tensors and plain data only.
"""

from __future__ import annotations

from pathlib import Path

import torch

TRAINER_STATE = "trainer_state.pt"


def save_trainer_state(state: dict, folder: Path) -> None:
    torch.save(state, folder / TRAINER_STATE)


def load_trainer_state(folder: Path) -> dict:
    return torch.load(folder / TRAINER_STATE, weights_only=True)
