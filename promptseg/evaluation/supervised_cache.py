"""Supervised references for an evaluation (promptseg.evaluation.supervised), kept in memory and, with a cache folder
(one per store snapshot), on disk so that later evaluations of the same snapshot reuse them.

What each UNet trains on, so that it never sees a query slice or its neighbours:
- a task with several cases: one UNet per set of query cases, trained on the task's slices of the other cases;
- a single-volume task: two UNets, one per half of the structure's slices (split at the median slice index), each
  trained on its half without the slices next to the split; a query is predicted by the UNet of the other half, so
  it is at least `min_gap` slices from everything that UNet trained on.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
from safetensors.torch import load_file, save_file
from torch import nn

from promptseg.evaluation.supervised import build_supervised_unet, fit_supervised_unet, predict_supervised
from storage.task_store import SliceRef, Task, TaskStore


def training_slices(task: Task, query_refs: list[SliceRef], min_gap: int) -> list[list[SliceRef]]:
    """Per query, the slices its supervised UNet trains on, as the module docstring says."""
    if len(task.cases) > 1:
        query_cases = {ref.case for ref in query_refs}
        others = [s for s in task.slices if s.case not in query_cases]
        return [others] * len(query_refs)
    indices = sorted(s.index for s in task.slices)
    middle = indices[len(indices) // 2]
    lower = [s for s in task.slices if s.index <= middle - min_gap]
    upper = [s for s in task.slices if s.index >= middle - 1 + min_gap]
    return [upper if ref.index < middle else lower for ref in query_refs]


class SupervisedReferences:
    """The supervised UNets of one evaluation; `trained` counts those fitted (not read from the cache)."""

    def __init__(self, store: TaskStore, steps: int, seed: int, cache_dir: Path | None, min_gap: int = 3) -> None:
        self.store, self.steps, self.seed, self.cache_dir, self.min_gap = store, steps, seed, cache_dir, min_gap
        self._cache: dict[str, nn.Module | None] = {}
        self.trained = 0

    def _network(self, task: Task, refs: list[SliceRef]) -> nn.Module | None:
        """The UNet trained on `refs` of `task` (None without any), from memory, the cache folder or a fresh fit."""
        if not refs:
            return None
        key = json.dumps([task.task_id, sorted((r.case, r.index) for r in refs), self.steps, self.seed])
        if key not in self._cache:
            self._cache[key] = self._load_or_fit(task, refs, hashlib.sha256(key.encode()).hexdigest()[:24])
        return self._cache[key]

    def _load_or_fit(self, task: Task, refs: list[SliceRef], name: str) -> nn.Module:
        path = self.cache_dir / f"{name}.safetensors" if self.cache_dir else None
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

    def predict(self, task: Task, query_refs: list[SliceRef], queries: np.ndarray) -> np.ndarray | None:
        """Foreground probabilities (Q, 1, R, R) of the queries, or None when some query has no UNet (a
        multi-case task without another case, a half of a single volume without slices)."""
        networks = [self._network(task, refs) for refs in training_slices(task, query_refs, self.min_gap)]
        if any(network is None for network in networks):
            return None
        predicted = np.empty(queries.shape, np.float32)
        for network in {id(n): n for n in networks}.values():
            which = [q for q, other in enumerate(networks) if other is network]
            predicted[which] = predict_supervised(network, queries[which])
        return predicted
