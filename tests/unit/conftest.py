"""Unit fixtures: a small task store built directly with the storage functions the data flows run (no Prefect, Ray,
MLflow or HTTP), in a few seconds, once per session.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pipelines.settings import Settings
from storage.ingest_record import IngestRecord
from storage.preprocess import commit_dataset_version, plan_for, preprocess_case
from storage.raw_dataset import load_raw_dataset
from storage.synthetic import write_synthetic_datasets
from storage.task_store import TaskStore
from storage.verify import check_case, dataset_root

STORE_CASES = 3  # per simulated center: several cases per task, so prompts and queries can come from different ones


@pytest.fixture(scope="session")
def task_store(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> TaskStore:
    """The three simulated centers (NIfTI, NRRD, DICOM), checked, ingested and preprocessed at the session's
    resolution as the ingest and preprocess flows do it, case by case in this process."""
    root = tmp_path_factory.mktemp("unit-store")
    store = TaskStore.open(str(root / "store.zarr"), settings.resolution, create=True)
    for source in write_synthetic_datasets(root / "sources", n_cases=STORE_CASES, seed=0):
        dataset = load_raw_dataset(source)
        checks = [check_case(case, dataset.labels, dataset_root(source)) for case in dataset.cases]
        assert not [problems for _, problems in checks if problems], f"{dataset.name} has bad cases"
        record = IngestRecord.from_checked(dataset, Path(source), [c for c, _ in checks], [], b"unit-tests")
        plan = plan_for(record, store.resolution)
        summaries = [s for case in record.cases for s in preprocess_case(store, record.dataset, case, plan)]
        commit_dataset_version(store, record, plan, summaries)
    return store
