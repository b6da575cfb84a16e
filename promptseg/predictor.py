"""The predictor: native 2D images in, native-grid masks out, through the harmonization recipe of `storage`.

`encode_task` harmonizes the prompt pairs and encodes them once; `segment` harmonizes queries, runs the
network against a cached encoding and maps each mask back to its query's native size.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from promptseg.image_io import InvalidInput
from promptseg.model import PromptEncoding, PromptSeg
from storage.harmonize import NormalizationParams, from_model_grid, normalize_intensity, to_model_grid


@dataclass(frozen=True)
class TaskEncoding:
    encoding: PromptEncoding
    n_prompts: int


class Predictor:
    def __init__(self, network: PromptSeg) -> None:
        self.network = network.eval()
        self.resolution = network.config.resolution

    def _harmonize(self, image: np.ndarray, modality: str) -> np.ndarray:
        normalized = normalize_intensity(image, NormalizationParams(modality))
        return to_model_grid(normalized[None], self.resolution)[0][0]

    def encode_task(self, images: list[np.ndarray], masks: list[np.ndarray], modality: str) -> TaskEncoding:
        if not images:
            raise InvalidInput("prompt_images", "at least one prompt pair is required")
        if len(images) != len(masks):
            raise InvalidInput("prompt_masks", f"{len(images)} prompt images but {len(masks)} prompt masks")
        if len(images) > self.network.config.n_max:
            raise InvalidInput("prompt_images", f"at most {self.network.config.n_max} prompts, got {len(images)}")
        for index, (image, mask) in enumerate(zip(images, masks, strict=True)):
            if image.shape != mask.shape:
                raise InvalidInput(f"prompt_masks[{index}]", f"mask shape {mask.shape} != image shape {image.shape}")
        prompt_images = np.stack([self._harmonize(image, modality) for image in images])
        prompt_masks = np.stack(
            [to_model_grid(m[None].astype(np.float32), self.resolution, label=True)[0][0] for m in masks]
        )
        with torch.inference_mode():
            encoding = self.network.encode_prompts(
                torch.from_numpy(prompt_images)[None, :, None], torch.from_numpy(prompt_masks)[None, :, None]
            )
        return TaskEncoding(encoding, len(images))

    def probabilities(self, task: TaskEncoding, queries: list[np.ndarray], modality: str) -> list[np.ndarray]:
        """Foreground probability of each query on its native grid."""
        grids = [
            to_model_grid(normalize_intensity(q, NormalizationParams(modality))[None], self.resolution) for q in queries
        ]
        batch = torch.from_numpy(np.stack([grid[0][0] for grid in grids]))[None, :, None]
        with torch.inference_mode():
            probs = torch.sigmoid(self.network.segment(task.encoding, batch))[0, :, 0].numpy()
        return [from_model_grid(p[None], grid[1])[0] for p, grid in zip(probs, grids, strict=True)]

    def segment(
        self, task: TaskEncoding, queries: list[np.ndarray], modality: str, threshold: float = 0.5
    ) -> list[np.ndarray]:
        return [(p > threshold).astype(np.uint8) for p in self.probabilities(task, queries, modality)]
