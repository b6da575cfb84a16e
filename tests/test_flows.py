"""Prefect flows of the data stage against the session's test harness: ingest, preprocess, cache reuse, bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

from pipelines.flows import ingest_flow, preprocess_flow
from promptseg.settings import Settings
from storage.sampler import split_tasks
from storage.task_store import TaskStore


def _task_run_states(flow_run_id: object) -> list[str]:
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    return [run.state.name for run in runs if run.name.startswith("preprocess-case")]


def test_preprocess_writes_store_with_all_datasets(settings: Settings, preprocessed: list[dict]) -> None:
    store = TaskStore.open(settings.store, settings.resolution)
    assert store.datasets() == ["ct-abdomen-61", "synth-center-a", "synth-center-b"]
    info = store.version_info("synth-center-a")
    assert info["modality"] == "CT" and info["center"] == "center-a"
    assert info["normalization"]["low"] < info["normalization"]["high"]
    assert info["fingerprint"]["foreground_intensity"]["percentile_99_5"] > 0
    assert "patient" not in json.dumps(info).lower()
    training, held_out = split_tasks(store.tasks(), settings.held_out)
    assert {t.task_id for t in held_out} >= {"synth-center-a/kidney/axis2", "synth-center-b/kidney/axis2"}
    assert len(training) > 60  # 61 real structures + synthetic ones, minus kidneys
    kidney = next(t for t in held_out if t.task_id == "synth-center-b/kidney/axis2")
    images, masks = store.read_slices(kidney, list(kidney.slices[:4]))
    assert images.min() >= 0.0 and images.max() <= 1.0
    assert [int(m.sum()) for m in masks] == [s.foreground for s in kidney.slices[:4]]


def test_second_preprocess_run_is_served_from_cache(settings: Settings, preprocessed: list[dict]) -> None:
    snapshot = TaskStore.open(settings.store).snapshot_id()
    state = preprocess_flow(str(settings.raw_dir), settings.store, settings.resolution, return_state=True)
    summaries = state.result()
    assert [s["version"] for s in summaries] == [s["version"] for s in preprocessed]
    states = _task_run_states(state.state_details.flow_run_id)
    assert len(states) == 4 + 4 + 1 and set(states) == {"Cached"}
    assert TaskStore.open(settings.store).snapshot_id() == snapshot


def test_bad_case_is_reported_and_others_complete(
    settings: Settings, prefect_harness: None, raw_sources: list[Path], tmp_path: Path
) -> None:
    folder = tmp_path / "broken"
    shutil.copytree(raw_sources[1], folder)
    (folder / "imagesTr" / "center-b_002_0000.nii.gz").write_bytes(b"not a nifti file")
    [summary] = ingest_flow([str(folder)], str(tmp_path / "raw"))
    assert summary["cases"] == 3
    [rejected] = summary["rejected"]
    assert rejected["case"] == "center-b_002" and rejected["file"].endswith("center-b_002_0000.nii.gz")
    assert "not a readable NIfTI" in rejected["problem"]
    record = json.loads((tmp_path / "raw" / f"{summary['dataset']}.json").read_text())
    assert [c["case"] for c in record["cases"]] == ["center-b_000", "center-b_001", "center-b_003"]
