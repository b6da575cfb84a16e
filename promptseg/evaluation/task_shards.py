"""Finished tasks of an evaluation kept on disk, so that an interrupted evaluation continues where it stopped.

A `full` evaluation on a CPU machine runs for hours; no result may depend on one long-lived process. Each finished
task's rows, skipped prompt counts and overlay candidates go to one `.npz` file (written aside, then renamed, so a
file is whole or absent) in `<out_dir>/.partial-<key>`, where the key digests everything the results depend on: the
spec, the store snapshot and every evaluated network's weights. A run with another key never reads them (and drops
the folders of other keys); the finished evaluation removes its folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from promptseg.evaluation.report import EpisodeScore, EvalSpec, SkippedCell

PREFIX = ".partial-"


@dataclass
class TaskResult:
    """One task's part of an evaluation: its scored rows, its skipped prompt counts and its overlay candidates
    (Dice, task id, image, reference, prediction) of the network's queries at the largest N."""

    rows: list[EpisodeScore]
    skipped: list[SkippedCell]
    shown: list[tuple]


def results_key(spec: EvalSpec, snapshot: str, networks: dict[str, nn.Module]) -> str:
    """A digest of the spec, the store snapshot and every evaluated network's weights (by name; the ensembles and
    the token-path ablation are the primary network's weights under the spec's options)."""
    digest = hashlib.sha256(json.dumps({"spec": spec.to_dict(), "snapshot": snapshot}, sort_keys=True).encode())
    for name in sorted(networks):
        digest.update(name.encode())
        for key, tensor in networks[name].state_dict().items():
            digest.update(key.encode())
            digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


class TaskShards:
    """The finished tasks of one evaluation (one key) under `out_dir`."""

    def __init__(self, out_dir: Path, key: str) -> None:
        self.folder = out_dir / f"{PREFIX}{key}"
        for stale in out_dir.glob(f"{PREFIX}*"):
            if stale != self.folder:
                shutil.rmtree(stale, ignore_errors=True)
        self.folder.mkdir(parents=True, exist_ok=True)

    def _path(self, task_id: str) -> Path:
        return self.folder / f"{hashlib.sha256(task_id.encode()).hexdigest()[:20]}.npz"

    def load(self, task_id: str) -> TaskResult | None:
        path = self._path(task_id)
        if not path.exists():
            return None
        with np.load(path, allow_pickle=False) as stored:
            record = json.loads(str(stored["record"]))
            images, truths, predictions = stored["images"], stored["truths"], stored["predictions"]
        shown = [
            (dice, task_id, image, truth, prediction)
            for dice, image, truth, prediction in zip(record["dice"], images, truths, predictions, strict=True)
        ]
        rows = [EpisodeScore(**row) for row in record["rows"]]
        return TaskResult(rows, [SkippedCell(**cell) for cell in record["skipped"]], shown)

    def save(self, task_id: str, result: TaskResult) -> None:
        path = self._path(task_id)
        record = {
            "rows": [row.model_dump() for row in result.rows],
            "skipped": [cell.model_dump() for cell in result.skipped],
            "dice": [float(item[0]) for item in result.shown],
        }
        empty = np.zeros((0, 1, 1))
        arrays = {
            name: np.stack([item[index] for item in result.shown]) if result.shown else empty
            for name, index in (("images", 2), ("truths", 3), ("predictions", 4))
        }
        partial = path.with_suffix(".partial.npz")
        np.savez_compressed(partial, record=np.array(json.dumps(record)), **arrays)
        os.replace(partial, path)

    def finish(self) -> None:
        """The evaluation's report is written: its shards are no longer needed."""
        shutil.rmtree(self.folder, ignore_errors=True)
