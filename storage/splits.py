"""The three disjoint splits of the task store: training, validation and test tasks.

A split is a list of patterns (`storage.sampler.is_held_out`: `dataset:`, `center:`, `task:`, `label:` followed by a
shell-style pattern), so whole datasets or centers are held out, not only label names. A task that a test pattern
names is a test task; else one a validation pattern names is a validation task; every other task trains. Design
choices are made on validation tasks; test tasks only report (docs/evaluation.md explains the defaults and says
when they may change).

The defaults, for the embedded real datasets (data/samples) and the simulator's three centers:

- validation: the whole ct-spine-tptbox dataset, the simulated center-b, and kidneys and spleen of ct-abdomen-61;
- test: the whole mr-spine-tptbox and micro-nuclei-dsb2018 datasets, the simulated center-c, and liver, pancreas
  and aorta of ct-abdomen-61.

Every training run, registered version and evaluation report records the splits it was made under (`to_tag`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field

from storage.sampler import is_held_out, split_tasks
from storage.task_store import Task

DEFAULT_VALIDATION = [
    "dataset:ct-spine-tptbox",
    "center:center-b",
    "task:ct-abdomen-61/kidney_*",
    "task:ct-abdomen-61/spleen/*",
]
DEFAULT_TEST = [
    "dataset:mr-spine-tptbox",
    "dataset:micro-nuclei-dsb2018",
    "center:center-c",
    "task:ct-abdomen-61/liver/*",
    "task:ct-abdomen-61/pancreas/*",
    "task:ct-abdomen-61/aorta/*",
]
SPLITS = ("training", "validation", "test")


@dataclass(frozen=True)
class Splits:
    """The validation and test patterns; everything else is training."""

    validation: list[str] = field(default_factory=lambda: list(DEFAULT_VALIDATION))
    test: list[str] = field(default_factory=lambda: list(DEFAULT_TEST))

    @property
    def held_out(self) -> list[str]:
        """Every pattern training never sees."""
        return [*self.validation, *self.test]

    def split_of(self, task: Task) -> str:
        if is_held_out(task, self.test):
            return "test"
        return "validation" if is_held_out(task, self.validation) else "training"

    def tasks(self, tasks: Iterable[Task], split: str, resolution: int | None = None) -> list[Task]:
        """The tasks of one split (with `resolution`, slices too small to prompt with are dropped, as in training)."""
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; choose one of {list(SPLITS)}")
        usable, _ = split_tasks(list(tasks), [], resolution)
        return [task for task in usable if self.split_of(task) == split]

    def to_dict(self) -> dict[str, list[str]]:
        return {"validation": list(self.validation), "test": list(self.test)}

    def to_tag(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict) -> Splits:
        return cls(validation=list(data.get("validation", [])), test=list(data.get("test", [])))
