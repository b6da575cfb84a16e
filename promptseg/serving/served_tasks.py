"""Tasks registered with the endpoint (POST /v1/tasks): durable prompt pairs plus a bounded cache of encodings.

A task's prompts (decoded images at their native sizes, one binary mask per prompt and label value, the modality,
an optional CT window, an optional pixel spacing, the structure names of its label values and, for prompts cut
from a volume, each prompt's RAS axis with each axis' pixel spacing) are written once to
`<folder>/<task id>.npz` (a temporary file, then an atomic rename, so a half-written task is never visible); the
task id is the SHA-256 of that content, so registering the same prompts twice gives the same id. Any replica that
sees the folder can serve the task and re-encode it after an eviction or a restart, and lists every task from the
folder (`headers`: what each is, without its arrays). Encodings live in an LRU keyed by (task id, model version,
ensemble size), so a new model version never reuses an old version's encodings.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import re
import tempfile
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from promptseg.inference.predictor import intensity_recipe
from storage.harmonize import NormalizationParams

TASK_ID = re.compile(r"^[0-9a-f]{32}$")


class UnknownTask(KeyError):
    """No task with this id is registered (or it was deleted)."""

    def __init__(self, task_id: str) -> None:
        super().__init__(task_id)
        self.task_id = task_id


@dataclass(frozen=True)
class TaskHeader:
    """What a registered task is, read without its prompt arrays."""

    task_id: str
    modality: str
    window: tuple[float, float] | None
    labels: list[int]
    n_prompts: int
    names: dict[int, str]
    pixel_spacing: tuple[float, float] | None
    axes: list[int]


@dataclass(frozen=True)
class StoredTask:
    task_id: str
    modality: str
    window: tuple[float, float] | None
    images: list[np.ndarray]
    masks: dict[int, list[np.ndarray]]
    pixel_spacing: tuple[float, float] | None = None
    prompt_axes: list[int] | None = None
    axis_spacing: dict[int, tuple[float, float]] | None = None

    def prompt_groups(self) -> list[tuple[int | None, list[int], tuple[float, float] | None]]:
        """(axis, prompt indices, pixel spacing) per group of prompts encoded together: one group (axis None) for
        2D prompts, one per RAS axis for prompts cut from a volume."""
        if self.prompt_axes is None:
            return [(None, list(range(self.n_prompts)), self.pixel_spacing)]
        axes = sorted(set(self.prompt_axes))
        spacing = self.axis_spacing or {}
        return [(a, [i for i, p in enumerate(self.prompt_axes) if p == a], spacing.get(a)) for a in axes]

    @property
    def n_prompts(self) -> int:
        return len(self.images)

    @property
    def labels(self) -> list[int]:
        return list(self.masks)

    @property
    def intensity(self) -> NormalizationParams:
        return intensity_recipe(self.modality, self.window)


def task_content_id(
    images: list[np.ndarray],
    masks: dict[int, list[np.ndarray]],
    modality: str,
    window: tuple[float, float] | None,
    pixel_spacing: tuple[float, float] | None = None,
    names: dict[int, str] | None = None,
    prompt_axes: list[int] | None = None,
    axis_spacing: dict[int, tuple[float, float]] | None = None,
) -> str:
    described = f"{modality}|{window}|{sorted(masks)}" + (f"|{pixel_spacing}" if pixel_spacing else "")
    described += f"|{sorted(names.items())}" if names else ""
    described += f"|{prompt_axes}|{sorted((axis_spacing or {}).items())}" if prompt_axes else ""
    digest = hashlib.sha256(described.encode())
    for array in [*images, *(m for label in sorted(masks) for m in masks[label])]:
        digest.update(str((array.dtype.str, array.shape)).encode())
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()[:32]


def _axes(data: np.lib.npyio.NpzFile) -> tuple[list[int] | None, dict[int, tuple[float, float]] | None]:
    """A stored task's prompt axes and per-axis pixel spacing (None for 2D prompts and tasks stored before)."""
    if "prompt_axes" not in data.files or not data["prompt_axes"].size:
        return None, None
    rows = data["axis_spacing"].tolist()
    spacing = {a: (row[0], row[1]) for a, row in enumerate(rows) if not np.isnan(row[0])}
    return [int(a) for a in data["prompt_axes"]], spacing


def encoding_bytes(encoding: object) -> int:
    """The memory an encoding holds: its arrays' and tensors' `nbytes`, through dicts, lists and tuples (a string
    counts its length)."""
    if isinstance(encoding, dict):
        return sum(encoding_bytes(value) for value in encoding.values())
    if isinstance(encoding, list | tuple):
        return sum(encoding_bytes(value) for value in encoding)
    if isinstance(encoding, str | bytes):
        return len(encoding)
    return int(getattr(encoding, "nbytes", 0))


class ServedTasks:
    """The durable task folder and the encoding cache of one replica."""

    def __init__(self, folder: Path, cache_bytes: int = 256 << 20) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.cache_bytes = cache_bytes
        self._encodings: OrderedDict[tuple[str, str, int], tuple[object, int]] = OrderedDict()

    def _path(self, task_id: str) -> Path:
        if not TASK_ID.match(task_id):
            raise UnknownTask(task_id)
        return self.folder / f"{task_id}.npz"

    def put(
        self,
        images: list[np.ndarray],
        masks: dict[int, list[np.ndarray]],
        modality: str,
        window: tuple[float, float] | None = None,
        pixel_spacing: tuple[float, float] | None = None,
        names: dict[int, str] | None = None,
        prompt_axes: list[int] | None = None,
        axis_spacing: dict[int, tuple[float, float]] | None = None,
    ) -> str:
        task_id = task_content_id(images, masks, modality, window, pixel_spacing, names, prompt_axes, axis_spacing)
        path = self._path(task_id)
        if path.exists():
            os.utime(path)  # registered again: used
        else:
            arrays = {f"image_{i}": a for i, a in enumerate(images)} | {
                f"mask_{label}_{i}": m for label, label_masks in masks.items() for i, m in enumerate(label_masks)
            }
            buffer = io.BytesIO()
            np.savez_compressed(
                buffer,
                modality=np.array(modality),
                window=np.array(window or [], dtype=np.float64),
                pixel_spacing=np.array(pixel_spacing or [], dtype=np.float64),
                labels=np.array(list(masks), dtype=np.int64),
                names=np.array([(names or {}).get(label, "") for label in masks]),
                prompt_axes=np.array(prompt_axes or [], dtype=np.int64),
                axis_spacing=np.array([(axis_spacing or {}).get(a, (np.nan, np.nan)) for a in range(3)]),
                **arrays,
            )
            with tempfile.NamedTemporaryFile(dir=self.folder, suffix=".partial", delete=False) as handle:
                handle.write(buffer.getvalue())
            os.replace(handle.name, path)
        return task_id

    def get(self, task_id: str) -> StoredTask:
        path = self._path(task_id)
        try:
            with np.load(path, allow_pickle=False) as data:
                n = sum(1 for key in data.files if key.startswith("image_"))
                window = data["window"].tolist()
                spacing = data["pixel_spacing"].tolist() if "pixel_spacing" in data.files else []
                return StoredTask(
                    task_id,
                    str(data["modality"]),
                    (window[0], window[1]) if window else None,
                    [data[f"image_{i}"] for i in range(n)],
                    {int(label): [data[f"mask_{label}_{i}"] for i in range(n)] for label in data["labels"]},
                    (spacing[0], spacing[1]) if spacing else None,
                    *_axes(data),
                )
        except FileNotFoundError as error:
            raise UnknownTask(task_id) from error

    def header(self, task_id: str) -> TaskHeader:
        """The task's modality, window, label values and number of prompts, reading only those entries of its file."""
        try:
            with np.load(self._path(task_id), allow_pickle=False) as data:
                low_high = data["window"].tolist()
                labels = [int(v) for v in data["labels"]]
                names = [str(n) for n in data["names"]] if "names" in data.files else [""] * len(labels)
                spacing = data["pixel_spacing"].tolist() if "pixel_spacing" in data.files else []
                return TaskHeader(
                    task_id,
                    str(data["modality"]),
                    (low_high[0], low_high[1]) if low_high else None,
                    labels,
                    sum(1 for key in data.files if key.startswith("image_")),
                    {label: name or f"label {label}" for label, name in zip(labels, names, strict=True)},
                    (spacing[0], spacing[1]) if spacing else None,
                    sorted(set(_axes(data)[0] or [])),
                )
        except FileNotFoundError as error:
            raise UnknownTask(task_id) from error

    def headers(self) -> list[TaskHeader]:
        """Every registered task's header, by id (a task deleted meanwhile is left out)."""
        found = []
        for path in sorted(self.folder.glob("*.npz")):
            if TASK_ID.match(path.stem):
                with contextlib.suppress(UnknownTask):
                    found.append(self.header(path.stem))
        return found

    def describe(self, task_id: str) -> tuple[NormalizationParams, TaskHeader]:
        """The task's intensity recipe and its header, for segmenting against it: the task is marked used (its
        file's time, from which `purge` counts)."""
        header = self.header(task_id)
        with contextlib.suppress(FileNotFoundError):
            os.utime(self._path(task_id))
        return intensity_recipe(header.modality, header.window), header

    def purge(self, unused_s: float) -> int:
        """Delete the tasks not registered or segmented against for `unused_s` seconds; returns how many."""
        cutoff, purged = time.time() - unused_s, 0
        for path in self.folder.glob("*.npz"):
            with contextlib.suppress(FileNotFoundError):
                if TASK_ID.match(path.stem) and path.stat().st_mtime < cutoff:
                    path.unlink()
                    purged += 1
        return purged

    def delete(self, task_id: str) -> None:
        try:
            self._path(task_id).unlink()
        except FileNotFoundError as error:
            raise UnknownTask(task_id) from error
        for key in [k for k in self._encodings if k[0] == task_id]:
            del self._encodings[key]

    def encoding(
        self, task_id: str, model_version: str, ensemble: int, encode: Callable[[StoredTask], object]
    ) -> object:
        """The cached encoding of the task for this model version and ensemble size, encoding (and caching) it when
        missing."""
        key = (task_id, model_version, ensemble)
        if key in self._encodings:
            self._encodings.move_to_end(key)
            return self._encodings[key][0]
        encoding = encode(self.get(task_id))
        self._encodings[key] = encoding, encoding_bytes(encoding)
        while sum(size for _, size in self._encodings.values()) > self.cache_bytes and len(self._encodings) > 1:
            self._encodings.popitem(last=False)
        return encoding

    def cached(self) -> list[tuple[str, str, int]]:
        return list(self._encodings)
