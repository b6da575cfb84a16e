"""Prefect flows of the data stage: `ingest` (inspect raw datasets) and `preprocess` (write the task store).

- ingest: one task per case reads it once (hashes, geometry, a foreground sample); the dataset fingerprint and
  an ingest record (JSON, no patient identifiers) are written to the workspace. A bad case is reported with its
  file and problem and left out; the other cases still complete.
- preprocess: one cached task per case harmonizes it into the store. The cache key is the case's content key, so
  an unchanged case costs nothing on the next run; the new version becomes current after all cases are written.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.futures import as_completed
from rich.progress import Progress

from storage.errors import RawDataError
from storage.fingerprint import dataset_fingerprint
from storage.harmonize import NormalizationParams, normalization_from_fingerprint
from storage.preprocess import case_key_for, inspect_case, preprocess_case, version_id_for
from storage.raw_dataset import RawCase, load_raw_dataset
from storage.task_store import TaskStore

AXIS = 2
EMPTY_FRACTION = 0.1


@task(name="inspect-case")
def inspect_case_task(case: RawCase, labels: dict[int, str]) -> dict:
    return inspect_case(case, labels)


def _record_path(raw_dir: Path, dataset: str) -> Path:
    return raw_dir / f"{dataset}.json"


def _write_json(path: Path, payload: dict) -> None:
    """Write a JSON file whole or not at all (temporary file, then replace)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(payload, indent=2))
    os.replace(temporary, path)


@flow(name="ingest")
def ingest_flow(sources: list[str], raw_dir: str) -> list[dict]:
    """Inspect every case of every source dataset; write one ingest record per dataset."""
    summaries = []
    for source in sources:
        dataset = load_raw_dataset(Path(source))
        futures = {inspect_case_task.submit(case, dataset.labels): case for case in dataset.cases}
        cases, rejected = [], []
        with Progress(transient=True) as progress:
            bar = progress.add_task(f"ingest {dataset.name}", total=len(futures))
            for future in as_completed(list(futures)):
                try:
                    cases.append(future.result())
                except RawDataError as error:
                    rejected.append({"case": futures[future].case_id, "file": error.path, "problem": error.problem})
                progress.advance(bar)
        cases.sort(key=lambda c: c["case"])
        record = {
            "dataset": dataset.name,
            "center": dataset.center,
            "modality": dataset.modality,
            "labels": {str(k): v for k, v in dataset.labels.items()},
            "source": str(Path(source).resolve()),
            "fingerprint": dataset_fingerprint(cases),
            "cases": [{k: v for k, v in case.items() if k != "foreground_sample"} for case in cases],
            "rejected": rejected,
        }
        _write_json(_record_path(Path(raw_dir), dataset.name), record)
        summaries.append({"dataset": dataset.name, "cases": len(cases), "rejected": rejected})
    return summaries


def _preprocess_cache_key(_: Any, parameters: dict[str, Any]) -> str:
    p = parameters
    key = case_key_for(p["case"], NormalizationParams(**p["params"]), p["resolution"], p["axis"], p["empty_fraction"])
    return "preprocess-" + hashlib.sha256(f"{p['store_url']}|{p['dataset']}|{key}".encode()).hexdigest()[:32]


@task(name="preprocess-case", cache_key_fn=_preprocess_cache_key, persist_result=True, result_serializer="json")
def preprocess_case_task(
    store_url: str, dataset: str, case: dict, params: dict, resolution: int, axis: int, empty_fraction: float
) -> dict:
    store = TaskStore.open(store_url, resolution)
    return preprocess_case(store, dataset, case, NormalizationParams(**params), axis, empty_fraction)


@flow(name="preprocess")
def preprocess_flow(raw_dir: str, store_url: str, resolution: int, datasets: list[str] | None = None) -> list[dict]:
    """Harmonize every ingested dataset (or those named) into the store; return one summary per dataset."""
    store = TaskStore.open(store_url, resolution, create=True)
    records = sorted(Path(raw_dir).glob("*.json"))
    if datasets:
        records = [path for path in records if path.stem in datasets]
    summaries = []
    for path in records:
        record = json.loads(path.read_text())
        params = normalization_from_fingerprint(record["modality"], record["fingerprint"])
        futures = [
            preprocess_case_task.submit(
                store_url, record["dataset"], case, params.to_dict(), resolution, AXIS, EMPTY_FRACTION
            )
            for case in record["cases"]
        ]
        with Progress(transient=True) as progress:
            bar = progress.add_task(f"preprocess {record['dataset']}", total=len(futures))
            for _ in as_completed(futures):
                progress.advance(bar)
        case_summaries = [future.result() for future in futures]
        version = version_id_for(record, [s["key"] for s in case_summaries])
        if not store.has_complete_version(record["dataset"], version):
            store.commit_version(
                record["dataset"],
                version,
                {
                    "center": record["center"],
                    "modality": record["modality"],
                    "labels": record["labels"],
                    "fingerprint": record["fingerprint"],
                    "normalization": params.to_dict(),
                    "axes": [AXIS],
                    "source_hashes": {
                        c["case"]: {"image": c["image_sha256"], "label": c["label_sha256"]} for c in record["cases"]
                    },
                },
                case_summaries,
            )
        else:
            store.point_current(record["dataset"], version)
        summaries.append({"dataset": record["dataset"], "version": version, "cases": len(case_summaries)})
    return summaries
