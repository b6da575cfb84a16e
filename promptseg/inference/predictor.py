"""The predictor: the one entry point to a trained network for evaluation, serving and the CLI.

`encode_task(prompt_images, prompt_masks, modality)` harmonizes native 2D prompt pairs with the recipe of
`storage.harmonize` (contract 2) and encodes them once; the `TaskEncoding` it returns can be cached and
serialized to bytes. `segment(task, queries, modality)` harmonizes the queries, runs them in batches against the
encoding and maps every probability map back to its query's native grid, with a per-pixel uncertainty.
`modality` is a modality name (per-image percentiles, 8-bit images scaled), a `NormalizationParams` (e.g. a CT
window; `intensity_recipe` picks a request's), `NORMALIZED` for native-size arrays already in [0, 1], or
`MODEL_GRID` for arrays that already are model input (R×R in [0, 1]: task-store slices, or a volume's slices
prepared by storage.preparation). Native 2D images take an optional pixel `spacing` (row, column mm) so that they
keep their physical aspect in the grid as store slices do. Probabilities become masks and label maps in one place
only: `label_map`, with a threshold.

Ensembling: with `ensemble=K > 1`, a task is encoded K times, each from a random subset of its prompts
(`subset_fraction` of them); probabilities are averaged. Subsets are drawn from the prompts' content, not their
positions: prompts are put in the order of a hash of their model-grid image and mask, and the draw is seeded by the
predictor's seed and the hashes, so the same prompts in any order give the same subsets and the same results.
The uncertainty map is the binary entropy (bits, in [0, 1]) of the averaged probability, so it grows where the
members disagree as well as where each is unsure.
Several labels of the same prompt images encode and segment in one batched call (`encode_labels`,
`segment_labels`). CPU and CUDA (bf16 autocast) alike.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
from numpy.typing import DTypeLike
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors
from torch import nn

from promptseg.inference.errors import InvalidInput
from promptseg.nets.factory import ENCODINGS
from storage.harmonize import NormalizationParams, SliceGeometry, from_model_grid, normalize_intensity, to_model_grid

MODEL_GRID = "model-grid"
NORMALIZED = "normalized"
DEFAULT_MODALITY = "CT"
DEFAULT_THRESHOLD = 0.5
Intensity = str | NormalizationParams
Spacing = tuple[float, float] | None


def intensity_recipe(
    modality: str | None = None,
    window: tuple[float, float] | None = None,
    *,
    task: NormalizationParams | None = None,
    volume_modality: str | None = None,
    model_window: tuple[float, float] | None = None,
) -> NormalizationParams:
    """The intensity recipe of a request: its own `modality` and `window` when it names either, else its task's
    recipe, else the modality the volume declares (a DICOM header's), else CT. A window alone keeps the task's
    modality; a modality alone drops the task's window. CT left without a window takes the served model's (the
    window of the store it was trained on), never per-image percentiles."""
    if task is not None and modality is None and window is None:
        recipe = task
    else:
        fallback = task.modality if task is not None else volume_modality or DEFAULT_MODALITY
        low, high = window or (None, None)
        recipe = NormalizationParams(modality or fallback, low, high)
    if recipe.modality.upper() == "CT" and recipe.low is None and model_window is not None:
        return NormalizationParams("CT", *model_window)
    return recipe


def label_map(
    probabilities: Iterable[np.ndarray], values: Sequence[int], threshold: float, dtype: DTypeLike = np.int64
) -> np.ndarray:
    """The label map of one query from each label's probability map (`values` in the same order): the most probable
    label (the first of equals) where its probability is above `threshold`, 0 elsewhere; one label's map is its
    mask times its value. The maps are taken one at a time (a volume's may be made lazily): besides the one at
    hand, only the best probability so far and the labels are held."""
    labels, best = None, None
    for value, probability in zip(values, probabilities, strict=True):
        if best is None:
            best, labels = np.array(probability, copy=True), np.full(probability.shape, value, dtype)
            continue
        labels[probability > best] = value
        np.maximum(best, probability, out=best)
    labels[best <= threshold] = 0
    return labels


@dataclass(frozen=True)
class TaskEncoding:
    """A task's prompts encoded by one network: K ensemble members along the encoding's batch axis."""

    encoding: NamedTuple
    n_prompts: int
    model_id: str

    @property
    def members(self) -> int:
        return int(self.encoding[0].shape[0])

    @property
    def nbytes(self) -> int:
        """The memory its tensors hold."""
        return sum(int(value.nbytes) for value in self.encoding)

    def to_bytes(self) -> bytes:
        tensors = {name: value.contiguous() for name, value in self.encoding._asdict().items()}
        metadata = {"encoding": type(self.encoding).__name__, "n_prompts": str(self.n_prompts), "model": self.model_id}
        return save_tensors(tensors, metadata=metadata)


@dataclass(frozen=True)
class Segmentation:
    """One query's result on its native grid: foreground probability, and its uncertainty (binary entropy, bits)
    computed when asked for (a volume's slices keep only their probabilities)."""

    probability: np.ndarray

    @property
    def uncertainty(self) -> np.ndarray:
        return _binary_entropy(torch.from_numpy(self.probability)).numpy()


def _model_id(network: nn.Module) -> str:
    return json.dumps(network.config.to_dict(), sort_keys=True)


def _binary_entropy(p: torch.Tensor) -> torch.Tensor:
    p = p.clamp(1e-6, 1 - 1e-6)
    return -(p * p.log2() + (1 - p) * (1 - p).log2())


class Predictor:
    def __init__(
        self,
        network: nn.Module,
        *,
        device: str | torch.device | None = None,
        batch_size: int = 16,
        ensemble: int = 1,
        subset_fraction: float = 0.5,
        seed: int = 0,
    ) -> None:
        if ensemble < 1 or not 0 < subset_fraction <= 1:
            raise ValueError(f"ensemble must be ≥ 1 and subset_fraction in (0, 1], got {ensemble}, {subset_fraction}")
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.network = network.eval().to(self.device)
        self.resolution: int = network.config.resolution
        self.n_max: int = network.config.n_max
        self.batch_size = batch_size
        self.ensemble = ensemble
        self.subset_fraction = subset_fraction
        self.seed = seed
        self.model_id = _model_id(network)

    def _autocast(self) -> torch.autocast:
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.device.type == "cuda")

    def _to_grid(
        self, image: np.ndarray, modality: Intensity, name: str, spacing: Spacing = None
    ) -> tuple[np.ndarray, SliceGeometry | None]:
        """A native 2D image → (R×R model input, geometry to map results back; None for MODEL_GRID input)."""
        if image.ndim != 2:
            raise InvalidInput(name, f"expected a 2D image, got shape {image.shape}")
        if not np.isfinite(image).all():
            raise InvalidInput(name, "contains NaN or infinite values")
        if modality == MODEL_GRID:
            if image.shape != (self.resolution, self.resolution):
                raise InvalidInput(name, f"model-grid input must be {self.resolution}×{self.resolution}")
            return image.astype(np.float32), None
        if modality == NORMALIZED:
            normalized = image.astype(np.float32)
        else:
            params = modality if isinstance(modality, NormalizationParams) else NormalizationParams(modality)
            normalized = normalize_intensity(image, params)
        grid, geometry = to_model_grid(normalized[None], self.resolution, spacing=spacing or (1.0, 1.0))
        return grid[0], geometry

    def _mask_to_grid(self, mask: np.ndarray, modality: Intensity, spacing: Spacing = None) -> np.ndarray:
        if modality == MODEL_GRID:
            return mask.astype(np.float32)
        grid, _ = to_model_grid(
            mask[None].astype(np.float32), self.resolution, label=True, spacing=spacing or (1.0, 1.0)
        )
        return grid[0]

    def _check_prompts(self, images: Sequence[np.ndarray], masks: Sequence[np.ndarray]) -> None:
        if not len(images):
            raise InvalidInput("prompt_images", "at least one prompt pair is required")
        if len(images) != len(masks):
            raise InvalidInput("prompt_masks", f"{len(images)} prompt images but {len(masks)} prompt masks")
        if len(images) > self.n_max:
            raise InvalidInput("prompt_images", f"at most {self.n_max} prompts, got {len(images)}")
        for index, (image, mask) in enumerate(zip(images, masks, strict=True)):
            if image.shape != mask.shape:
                raise InvalidInput(f"prompt_masks[{index}]", f"mask shape {mask.shape} != image shape {image.shape}")
            if not np.isin(mask, (0, 1)).all():
                raise InvalidInput(f"prompt_masks[{index}]", "mask is not binary (values other than 0 and 1)")

    def _subsets(self, images: np.ndarray, masks: np.ndarray, ensemble: int) -> list[np.ndarray]:
        """The ensemble's prompt subsets (indices into the prompts): all prompts once, or K random subsets of
        `subset_fraction` of them. Both depend on the prompts' content only: prompts go in the order of a hash of
        their model-grid image and mask, and the draw is seeded by the predictor's seed and those hashes, so the
        same prompts in any order give the same subsets, in the same order (equal pairs are interchangeable)."""
        n = len(images)
        digests = [
            hashlib.blake2b(
                np.ascontiguousarray(image, np.float32).tobytes() + np.ascontiguousarray(mask, np.float32).tobytes(),
                digest_size=16,
            ).digest()
            for image, mask in zip(images, masks, strict=True)
        ]
        order = np.array(sorted(range(n), key=digests.__getitem__), dtype=np.int64)
        size = max(1, math.ceil(n * self.subset_fraction))
        if ensemble == 1 or size == n:
            return [order]
        content = hashlib.blake2b(b"".join(sorted(digests)), digest_size=16).digest()
        rng = np.random.default_rng([self.seed, n, int.from_bytes(content, "little")])
        return [order[np.sort(rng.choice(n, size, replace=False))] for _ in range(ensemble)]

    def encode_labels(
        self,
        prompt_images: Sequence[np.ndarray],
        masks_by_label: dict[str, Sequence[np.ndarray]],
        modality: Intensity,
        ensemble: int | None = None,
        spacing: Spacing = None,
    ) -> dict[str, TaskEncoding]:
        """One task per label over the same prompt images, encoded in one batched call (`ensemble` members each,
        the predictor's default unless given)."""
        ensemble = ensemble or self.ensemble
        if ensemble < 1:
            raise InvalidInput("ensemble", f"ensemble must be ≥ 1, got {ensemble}")
        if not masks_by_label:
            raise InvalidInput("prompt_masks", "no label to segment")
        for label, masks in masks_by_label.items():
            try:
                self._check_prompts(prompt_images, masks)
            except InvalidInput as error:
                raise InvalidInput(f"{error.file} (label {label})" if label else error.file, error.problem) from None
        images = np.stack(
            [self._to_grid(im, modality, f"prompt_images[{i}]", spacing)[0] for i, im in enumerate(prompt_images)]
        )
        labels = list(masks_by_label)
        masks = np.stack(
            [np.stack([self._mask_to_grid(m, modality, spacing) for m in masks_by_label[lb]]) for lb in labels]
        )
        subsets = [self._subsets(images, label_masks, ensemble) for label_masks in masks]  # per label: its pairs
        image_batch = torch.from_numpy(np.stack([images[s] for label in subsets for s in label]))[:, :, None]
        mask_batch = torch.from_numpy(np.stack([masks[i][s] for i, label in enumerate(subsets) for s in label]))
        with torch.inference_mode(), self._autocast():
            encoding = self.network.encode_prompts(image_batch.to(self.device), mask_batch[:, :, None].to(self.device))
        k = len(subsets[0])
        return {
            label: TaskEncoding(type(encoding)(*(t[i * k : (i + 1) * k] for t in encoding)), len(images), self.model_id)
            for i, label in enumerate(labels)
        }

    def encode_task(
        self,
        prompt_images: Sequence[np.ndarray],
        prompt_masks: Sequence[np.ndarray],
        modality: Intensity,
        ensemble: int | None = None,
    ) -> TaskEncoding:
        return self.encode_labels(prompt_images, {"": prompt_masks}, modality, ensemble)[""]

    def task_from_bytes(self, data: bytes) -> TaskEncoding:
        """A serialized task encoding, refused unless this predictor's network produced it."""
        try:
            tensors = load_tensors(data)
            header_length = int.from_bytes(data[:8], "little")
            metadata = json.loads(data[8 : 8 + header_length])["__metadata__"]
        except Exception as error:
            raise InvalidInput("task", f"not a serialized task encoding ({error})") from error
        if metadata.get("model") != self.model_id:
            raise InvalidInput("task", "the task was encoded by a different model; encode it again")
        encoding_type = ENCODINGS[metadata["encoding"]]
        encoding = encoding_type(**{name: tensors[name].to(self.device) for name in encoding_type._fields})
        return TaskEncoding(encoding, int(metadata["n_prompts"]), self.model_id)

    def segment_labels(
        self,
        tasks: dict[str, TaskEncoding],
        queries: Sequence[np.ndarray],
        modality: Intensity,
        spacing: Spacing = None,
    ) -> dict[str, list[Segmentation]]:
        """Segment the same queries for several tasks; tasks of equal encoding shape run in one batch."""
        if not len(queries):
            raise InvalidInput("queries", "at least one query is required")
        for task in tasks.values():
            if task.model_id != self.model_id:
                raise InvalidInput("task", "the task was encoded by a different model; encode it again")
        grids = [self._to_grid(q, modality, f"queries[{i}]", spacing) for i, q in enumerate(queries)]
        query_grid = torch.from_numpy(np.stack([grid for grid, _ in grids]))[:, None]  # (Q, 1, R, R)
        shapes = {tuple(t.encoding[0].shape) for t in tasks.values()}
        groups = [list(tasks)] if len(shapes) == 1 else [[label] for label in tasks]
        probabilities: dict[str, torch.Tensor] = {}
        for group in groups:
            encoding = type(tasks[group[0]].encoding)(
                *(torch.cat(parts) for parts in zip(*(tasks[label].encoding for label in group), strict=True))
            )
            members = tasks[group[0]].members
            chunks = []
            for start in range(0, len(queries), self.batch_size):
                chunk = query_grid[start : start + self.batch_size].to(self.device)
                batch = chunk[None].expand(encoding[0].shape[0], *chunk.shape)
                with torch.inference_mode(), self._autocast():
                    logits = self.network.segment(encoding, batch)
                chunks.append(torch.sigmoid(logits.float())[:, :, 0].unflatten(0, (len(group), members)).mean(1))
            for index, label in enumerate(group):
                probabilities[label] = torch.cat([c[index] for c in chunks]).cpu()
        return {
            label: [self._native(p, geometry) for p, (_, geometry) in zip(probs, grids, strict=True)]
            for label, probs in probabilities.items()
        }

    def segment(self, task: TaskEncoding, queries: Sequence[np.ndarray], modality: Intensity) -> list[Segmentation]:
        return self.segment_labels({"": task}, queries, modality)[""]

    @staticmethod
    def _native(probability: torch.Tensor, geometry: SliceGeometry | None) -> Segmentation:
        maps = probability[None].numpy()
        if geometry is not None:
            maps = from_model_grid(maps, geometry)
        return Segmentation(maps[0])
