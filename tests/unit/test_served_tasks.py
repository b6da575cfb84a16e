"""Tasks registered with the endpoint: durable, content-addressed, and an encoding cache that is bounded and keyed
by model version (the HTTP side is in test_serving)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from promptseg.serving.served_tasks import ServedTasks, UnknownTask


def _prompts(seed: int) -> tuple[list[np.ndarray], dict[int, list[np.ndarray]]]:
    rng = np.random.default_rng(seed)
    images = [rng.integers(0, 255, (40, 30), dtype=np.uint8) for _ in range(2)]
    return images, {1: [(image > 128).astype(np.uint8) for image in images]}


def test_tasks_are_content_addressed_and_survive_a_new_replica(tmp_path: Path) -> None:
    images, masks = _prompts(0)
    first = ServedTasks(tmp_path)
    task_id = first.put(images, masks, "MR")
    assert first.put(images, masks, "MR") == task_id and first.put(images, masks, "CT") != task_id
    assert first.put(images, masks, "CT", (-100.0, 200.0)) != first.put(images, masks, "CT")  # the window counts
    assert not list(tmp_path.glob("*.partial"))
    restored = ServedTasks(tmp_path).get(task_id)  # another replica, or this one after a restart
    assert restored.modality == "MR" and restored.n_prompts == 2 and restored.labels == [1]
    assert all(
        np.array_equal(a, b) for a, b in zip(restored.images + restored.masks[1], images + masks[1], strict=True)
    )


def test_tasks_keep_several_labels_and_a_ct_window(tmp_path: Path) -> None:
    images, masks = _prompts(1)
    labels = {2: masks[1], 5: [1 - m for m in masks[1]]}
    tasks = ServedTasks(tmp_path)
    task_id = tasks.put(images, labels, "CT", (-160.0, 240.0))
    restored = ServedTasks(tmp_path).get(task_id)
    assert restored.labels == [2, 5] and restored.window == (-160.0, 240.0)
    assert np.array_equal(restored.masks[5][1], labels[5][1])
    intensity, header = tasks.describe(task_id)
    assert (intensity.modality, intensity.low, intensity.high, header.labels) == ("CT", -160.0, 240.0, [2, 5])
    assert header.names == {2: "label 2", 5: "label 5"}
    named = tasks.put(images, labels, "CT", (-160.0, 240.0), (0.7, 0.7), {2: "liver", 5: "spleen"})
    assert named != task_id and tasks.header(named).names == {2: "liver", 5: "spleen"}
    assert tasks.get(named).pixel_spacing == (0.7, 0.7) == tasks.header(named).pixel_spacing


def test_encodings_are_cached_per_model_version_within_a_bound_in_bytes(tmp_path: Path) -> None:
    tasks = ServedTasks(tmp_path, cache_bytes=2 * len("encoding of ") + 64)  # two encodings (44-byte strings) fit
    ids = [tasks.put(*_prompts(seed), "CT") for seed in range(3)]
    calls: list[str] = []

    def encode(task: object) -> str:
        calls.append(task.task_id)
        return f"encoding of {task.task_id}"

    assert tasks.encoding(ids[0], "1", 1, encode) == f"encoding of {ids[0]}"
    tasks.encoding(ids[0], "1", 1, encode)
    assert calls == [ids[0]]  # the second call hit the cache
    tasks.encoding(ids[0], "2", 1, encode)  # a new model version never reuses the old encoding
    assert calls == [ids[0], ids[0]]
    tasks.encoding(ids[1], "2", 1, encode)
    assert tasks.cached() == [(ids[0], "2", 1), (ids[1], "2", 1)]  # bounded: the least recently used went
    tasks.encoding(ids[0], "1", 1, encode)  # evicted, so encoded again from the durable prompts
    assert calls[-1] == ids[0] and len(tasks.cached()) == 2
    big = np.zeros(1000, np.uint8)
    tasks.encoding(ids[2], "2", 1, lambda task: {None: {"1": big}})  # over the bound alone: kept, every other goes
    assert tasks.cached() == [(ids[2], "2", 1)]


def test_deleted_and_unknown_tasks_raise(tmp_path: Path) -> None:
    tasks = ServedTasks(tmp_path)
    task_id = tasks.put(*_prompts(0), "CT")
    tasks.encoding(task_id, "1", 1, lambda task: "encoded")
    tasks.delete(task_id)
    assert tasks.cached() == []
    for bad in (task_id, "0" * 32, "../../etc/passwd"):
        with pytest.raises(UnknownTask):
            tasks.get(bad)
    with pytest.raises(UnknownTask):
        tasks.delete(task_id)


def test_every_task_is_listed_with_its_header_and_no_arrays(tmp_path: Path) -> None:
    tasks = ServedTasks(tmp_path)
    images, masks = _prompts(0)
    ids = sorted([tasks.put(images, masks, "MR"), tasks.put(images, {3: masks[1], 5: masks[1]}, "CT", (-160.0, 240.0))])
    (tmp_path / "notes.npz").write_bytes(b"not a task")  # other files in the folder are no tasks
    headers = tasks.headers()
    assert [h.task_id for h in headers] == ids
    by_modality = {h.modality: h for h in headers}
    assert (by_modality["MR"].labels, by_modality["MR"].window, by_modality["MR"].n_prompts) == ([1], None, 2)
    assert (by_modality["CT"].labels, by_modality["CT"].window) == ([3, 5], (-160.0, 240.0))
    tasks.delete(ids[0])
    assert [h.task_id for h in tasks.headers()] == ids[1:]


def test_prompts_cut_along_several_axes_are_grouped_by_axis_with_their_spacing(tmp_path: Path) -> None:
    tasks = ServedTasks(tmp_path)
    images, masks = _prompts(7)
    n = len(images)
    axes = [0] * (n - 1) + [2]
    spacing = {0: (0.8, 2.5), 2: (0.8, 0.8)}
    task_id = tasks.put(images, masks, "CT", (-100.0, 200.0), prompt_axes=axes, axis_spacing=spacing)
    task = tasks.get(task_id)
    assert task.prompt_groups() == [(0, list(range(n - 1)), (0.8, 2.5)), (2, [n - 1], (0.8, 0.8))]
    assert tasks.header(task_id).axes == [0, 2]
    assert task_id != tasks.put(images, masks, "CT", (-100.0, 200.0))
    assert tasks.get(tasks.put(images, masks, "CT")).prompt_groups() == [(None, list(range(n)), None)]
