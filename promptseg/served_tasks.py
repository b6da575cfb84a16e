"""Tasks registered with the endpoint (POST /v1/tasks): durable prompt pairs plus a bounded cache of encodings.

A task's prompts (decoded images and binary masks at their native sizes, and the modality) are written once to
`<folder>/<task id>.npz` (a temporary file, then an atomic rename, so a half-written task is never visible); the
task id is the SHA-256 of that content, so registering the same prompts twice gives the same id. Any replica that
sees the folder can serve the task and re-encode it after an eviction or a restart. Encodings live in an LRU keyed
by (task id, model version), so a new model version never reuses an old version's encodings.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import tempfile
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

TASK_ID = re.compile(r"^[0-9a-f]{32}$")


class UnknownTask(KeyError):
    """No task with this id is registered (or it was deleted)."""

    def __init__(self, task_id: str) -> None:
        super().__init__(task_id)
        self.task_id = task_id


@dataclass(frozen=True)
class StoredTask:
    task_id: str
    modality: str
    images: list[np.ndarray]
    masks: list[np.ndarray]

    @property
    def n_prompts(self) -> int:
        return len(self.images)


def task_content_id(images: list[np.ndarray], masks: list[np.ndarray], modality: str) -> str:
    digest = hashlib.sha256(modality.encode())
    for array in [*images, *masks]:
        digest.update(str((array.dtype.str, array.shape)).encode())
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()[:32]


class ServedTasks:
    """The durable task folder and the encoding cache of one replica."""

    def __init__(self, folder: Path, cache_size: int = 128) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.cache_size = cache_size
        self._encodings: OrderedDict[tuple[str, str], object] = OrderedDict()

    def _path(self, task_id: str) -> Path:
        if not TASK_ID.match(task_id):
            raise UnknownTask(task_id)
        return self.folder / f"{task_id}.npz"

    def put(self, images: list[np.ndarray], masks: list[np.ndarray], modality: str) -> str:
        task_id = task_content_id(images, masks, modality)
        path = self._path(task_id)
        if not path.exists():
            arrays = {f"image_{i}": a for i, a in enumerate(images)} | {f"mask_{i}": m for i, m in enumerate(masks)}
            buffer = io.BytesIO()
            np.savez_compressed(buffer, modality=np.array(modality), **arrays)
            with tempfile.NamedTemporaryFile(dir=self.folder, suffix=".partial", delete=False) as handle:
                handle.write(buffer.getvalue())
            os.replace(handle.name, path)
        return task_id

    def get(self, task_id: str) -> StoredTask:
        path = self._path(task_id)
        try:
            with np.load(path, allow_pickle=False) as data:
                n = sum(1 for key in data.files if key.startswith("image_"))
                return StoredTask(
                    task_id,
                    str(data["modality"]),
                    [data[f"image_{i}"] for i in range(n)],
                    [data[f"mask_{i}"] for i in range(n)],
                )
        except FileNotFoundError as error:
            raise UnknownTask(task_id) from error

    def modality(self, task_id: str) -> str:
        """The task's modality, reading only that entry of its file (no prompt arrays)."""
        try:
            with np.load(self._path(task_id), allow_pickle=False) as data:
                return str(data["modality"])
        except FileNotFoundError as error:
            raise UnknownTask(task_id) from error

    def delete(self, task_id: str) -> None:
        try:
            self._path(task_id).unlink()
        except FileNotFoundError as error:
            raise UnknownTask(task_id) from error
        for key in [k for k in self._encodings if k[0] == task_id]:
            del self._encodings[key]

    def encoding(self, task_id: str, model_version: str, encode: Callable[[StoredTask], object]) -> object:
        """The cached encoding of the task for this model version, encoding (and caching) it when missing."""
        key = (task_id, model_version)
        if key in self._encodings:
            self._encodings.move_to_end(key)
            return self._encodings[key]
        encoding = encode(self.get(task_id))
        self._encodings[key] = encoding
        while len(self._encodings) > self.cache_size:
            self._encodings.popitem(last=False)
        return encoding

    def cached(self) -> list[tuple[str, str]]:
        return list(self._encodings)
