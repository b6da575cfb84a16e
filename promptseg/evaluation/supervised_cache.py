"""Supervised references for an evaluation: one UNet per (task, query cases), trained on the task's slices of the
other cases (promptseg.evaluation.supervised), kept in memory and, with a cache folder (one per store snapshot),
on disk so that later evaluations of the same snapshot reuse them."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
from safetensors.torch import load_file, save_file
from torch import nn

from promptseg.evaluation.supervised import build_supervised_unet, fit_supervised_unet, predict_supervised
from storage.task_store import Task, TaskStore


class SupervisedReferences:
    """The supervised UNets of one evaluation; `trained` counts those fitted (not read from the cache)."""

    def __init__(self, store: TaskStore, steps: int, seed: int, cache_dir: Path | None) -> None:
        self.store, self.steps, self.seed, self.cache_dir = store, steps, seed, cache_dir
        self._cache: dict[tuple[str, tuple[str, ...]], nn.Module | None] = {}
        self.trained = 0

    def _fit(self, task: Task, query_cases: tuple[str, ...]) -> nn.Module | None:
        refs = [s for s in task.slices if s.case not in query_cases]
        if len(task.cases) < 2 or not refs:
            return None
        key = json.dumps([task.task_id, query_cases, self.steps, self.seed])
        path = (
            self.cache_dir / f"{hashlib.sha256(key.encode()).hexdigest()[:24]}.safetensors" if self.cache_dir else None
        )
        if path is not None and path.exists():
            network = build_supervised_unet()
            network.load_state_dict(load_file(str(path)))
            return network.eval()
        images, masks = self.store.read_slices(task, refs)
        network = fit_supervised_unet(
            images[:, None].astype(np.float32), masks[:, None], steps=self.steps, seed=self.seed
        )
        self.trained += 1
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            partial = path.with_suffix(".partial")
            save_file({k: v.contiguous() for k, v in network.state_dict().items()}, str(partial))
            partial.replace(path)
        return network

    def predict(self, task: Task, query_cases: tuple[str, ...], queries: np.ndarray) -> np.ndarray | None:
        """Foreground probabilities (Q, 1, R, R) of the queries, or None when the task has no other case."""
        key = (task.task_id, query_cases)
        if key not in self._cache:
            self._cache[key] = self._fit(task, query_cases)
        network = self._cache[key]
        return None if network is None else predict_supervised(network, queries)
