"""Prefect flows of the data stage against the session's test harness: ingest, preprocess, caching, privacy."""

from __future__ import annotations

import json
import time
from pathlib import Path

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

from pipelines.flows import preprocess_flow
from pipelines.settings import Settings
from storage.ingest_record import load_ingest_records
from storage.reports import PreprocessReport
from storage.task_store import TaskStore

REAL = [
    "ct-abdomen-61",
    "ct-chest-slicerio",
    "ct-spine-tptbox",
    "micro-nuclei-dsb2018",
    "mr-brain-mni152",
    "mr-spine-tptbox",
]
DATASETS = sorted([*REAL, "synth-center-a", "synth-center-b", "synth-center-c"])


def _task_run_states(flow_run_id: object, expected: int, timeout_s: float = 60.0) -> list[str]:
    """The final states of the flow run's preprocess-case task runs. Prefect records task-run states from events
    that its server processes after the flow returns, so they are read until `expected` runs have left Pending and
    Running (or the timeout passes)."""
    deadline = time.monotonic() + timeout_s
    while True:
        with get_client(sync_client=True) as client:
            runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
        states = [run.state.name for run in runs if run.name.startswith("preprocess-case")]
        settled = len(states) >= expected and not {"Pending", "Running"} & set(states)
        if settled or time.monotonic() > deadline:
            return states
        time.sleep(0.5)


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
    assert {store.version_info(name)["center"] for name in REAL} == {
        "totalsegmentator-example", "slicerio-example", "tptbox-ct-example", "dsb2018-example", "mni-icbm152",
        "tptbox-mr-example",
    }  # fmt: skip
    nuclei = next(t for t in store.tasks() if t.dataset == "micro-nuclei-dsb2018")
    assert nuclei.axis == 2 and len(nuclei.cases) == 16  # one case per tile, sliced along the 2D image's axis only
    splits = settings.training.splits
    validation, test = (splits.tasks(store.tasks(), split) for split in ("validation", "test"))
    assert {t.dataset for t in validation} == {"synth-center-b", "ct-spine-tptbox", "ct-abdomen-61"}
    assert {t.dataset for t in test} == {"synth-center-c", "mr-spine-tptbox", "micro-nuclei-dsb2018", "ct-abdomen-61"}
    assert {t.label_name for t in validation if t.dataset == "ct-abdomen-61"} == {
        "kidney_left",
        "kidney_right",
        "spleen",
    }
    kidney = next(t for t in test if t.task_id == "synth-center-c/kidney/axis2")
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
    cases = 5 + 16 + 3 * 4  # one task per case: five single-case real datasets, 16 nuclei tiles, 3 × 4 simulated
    states = _task_run_states(state.state_details.flow_run_id, cases)
    assert len(states) == cases and set(states) == {"Cached"}
    assert _file_times(settings.store) == before
    assert TaskStore.open(settings.store).snapshot_id() == snapshot
