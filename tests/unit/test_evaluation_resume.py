"""An interrupted evaluation continues where it stopped (promptseg.evaluation.task_shards): its finished tasks are
read back, not evaluated again, and its report equals an uninterrupted run's; other weights never reuse them."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from promptseg.evaluation import heldout
from promptseg.evaluation.report import eval_spec
from promptseg.evaluation.task_shards import TaskResult, results_key
from promptseg.nets.factory import build_model, model_config
from storage.splits import Splits
from storage.task_store import Task, TaskStore


def _network(seed: int, resolution: int = 32) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(model_config("tiny", resolution, n_max=8))


def test_an_interrupted_evaluation_continues_from_its_finished_tasks(
    task_store: TaskStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    network = _network(0, task_store.resolution)
    spec = eval_spec("quick", Splits(), n_prompts=[1, 2], queries=2, axes=[2])
    whole = heldout.evaluate(network, task_store, spec, tmp_path / "whole")
    assert len(whole.report.tasks) >= 2
    evaluate_task, evaluated = heldout._evaluate_task, []

    def stopping_after_one(task: Task, *args: object) -> TaskResult:
        if evaluated:
            raise RuntimeError("the machine went away")
        evaluated.append(task.task_id)
        return evaluate_task(task, *args)

    monkeypatch.setattr(heldout, "_evaluate_task", stopping_after_one)
    with pytest.raises(RuntimeError, match="went away"):
        heldout.evaluate(network, task_store, spec, tmp_path / "resumed")
    assert not (tmp_path / "resumed" / "results.json").exists()
    first, evaluated = evaluated[0], []
    monkeypatch.setattr(
        heldout, "_evaluate_task", lambda task, *args: evaluated.append(task) or evaluate_task(task, *args)
    )
    resumed = heldout.evaluate(network, task_store, spec, tmp_path / "resumed")

    assert first not in evaluated
    assert len(evaluated) == len(whole.report.tasks) - 1
    assert [r.model_dump_json() for r in resumed.report.rows] == [r.model_dump_json() for r in whole.report.rows]
    assert resumed.report.overlays == whole.report.overlays
    assert not list((tmp_path / "resumed").glob(".partial-*")), "a finished evaluation keeps no shards"


def test_other_weights_or_another_spec_never_read_the_same_shards(task_store: TaskStore) -> None:
    spec = eval_spec("quick", Splits())
    snapshot = task_store.snapshot_id()
    key = results_key(spec, snapshot, {"promptseg": _network(0)})
    assert key == results_key(spec, snapshot, {"promptseg": _network(0)})
    assert key != results_key(spec, snapshot, {"promptseg": _network(1)})
    assert key != results_key(eval_spec("quick", Splits(), resamples=2), snapshot, {"promptseg": _network(0)})
    assert key != results_key(spec, "another-snapshot", {"promptseg": _network(0)})
