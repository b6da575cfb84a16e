"""Prefect flows of the data stage against the session's test harness: ingest, preprocess, caching, privacy."""

from __future__ import annotations

import json
from pathlib import Path

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

from pipelines.flows import preprocess_flow
from pipelines.settings import Settings
from storage.ingest_record import load_ingest_records
from storage.reports import PreprocessReport
from storage.sampler import split_tasks
from storage.task_store import TaskStore

DATASETS = ["ct-abdomen-61", "synth-center-a", "synth-center-b", "synth-center-c"]


def _task_run_states(flow_run_id: object) -> list[str]:
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    return [run.state.name for run in runs if run.name.startswith("preprocess-case")]


def _file_times(root: str) -> dict[str, int]:
    return {str(p): p.stat().st_mtime_ns for p in Path(root).rglob("*") if p.is_file()}


def test_preprocess_writes_every_center_and_format(settings: Settings, preprocessed: PreprocessReport) -> None:
    store = TaskStore.open(settings.store, settings.resolution)
    assert store.datasets() == DATASETS and not preprocessed.failures
    for name, modality, center in [
        ("synth-center-a", "CT", "center-a"),
        ("synth-center-b", "MR", "center-b"),
        ("synth-center-c", "MR", "center-c"),
    ]:
        info = store.version_info(name)
        assert (info["modality"], info["center"]) == (modality, center)
        assert len(info["plan"]["target_spacing"]) == 3 and info["plan"]["axes"] == [0, 1, 2]
    ct = store.version_info("ct-abdomen-61")
    assert len(ct["labels"]) == 61 and ct["normalization"]["low"] < ct["normalization"]["high"]
    _, held_out = split_tasks(store.tasks(), settings.training.held_out)
    assert {f"synth-center-{c}/kidney/axis{a}" for c in "abc" for a in (0, 1, 2)} <= {t.task_id for t in held_out}
    kidney = next(t for t in held_out if t.task_id == "synth-center-c/kidney/axis2")
    images, masks = store.read_slices(kidney, list(kidney.slices[:4]))
    assert images.min() >= 0.0 and images.max() <= 1.0
    assert [int(m.sum()) for m in masks] == [s.foreground for s in kidney.slices[:4]]


def test_store_names_cases_by_keyed_pseudonyms_only(settings: Settings, preprocessed: PreprocessReport) -> None:
    store = TaskStore.open(settings.store)
    attributes = json.dumps([store.version_info(name) for name in store.datasets()])
    assert "center-a_000" not in attributes and "case000" not in attributes
    cases = {ref.case for task in store.tasks() for ref in task.slices}
    assert all(len(case) == 17 and case.startswith("c") for case in cases)
    records = load_ingest_records(settings.data.raw_dir)
    assert [r.dataset for r in records] == DATASETS
    assert cases <= {case.store_id for record in records for case in record.cases}  # the workspace links them back


def test_second_run_is_served_from_cache_and_writes_nothing(settings: Settings, preprocessed: PreprocessReport) -> None:
    before, snapshot = _file_times(settings.store), TaskStore.open(settings.store).snapshot_id()
    held_out = settings.training.held_out  # the spec the store's CT window was pooled under (as stages pass it)
    state = preprocess_flow(
        str(settings.data.raw_dir), settings.store, settings.resolution, held_out=held_out, return_state=True
    )
    report = state.result()
    assert [d.version for d in report.datasets] == [d.version for d in preprocessed.datasets]
    states = _task_run_states(state.state_details.flow_run_id)
    assert len(states) == 1 + 3 * 4 and set(states) == {"Cached"}
    assert _file_times(settings.store) == before
    assert TaskStore.open(settings.store).snapshot_id() == snapshot
