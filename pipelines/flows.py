"""Prefect flows of the data stage: `ingest` (check raw datasets) and `preprocess` (write the task store).

- ingest: one task per case reads it once (storage.verify: every problem, with its file relative to the dataset
  root). Good cases get a keyed pseudonym (storage.privacy) and go into the dataset's ingest record (JSON in the
  workspace) with the fingerprint; bad cases are reported and left out while every good case still lands.
- preprocess: one task per case harmonizes it into the store, in parallel on Dask (a local cluster by default,
  a scheduler address by configuration), retried on transient errors, cached by the case's content key (source
  hashes + plan + recipe code version) so an unchanged case costs nothing. A new dataset version becomes current
  after all its cases are written; a case that fails is reported and left out of it.
Each run ends with a Markdown summary artifact (datasets, cases, tasks, slices, bytes, failures, time).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.futures import wait
from prefect_dask import DaskTaskRunner

from storage.errors import StorageError
from storage.fingerprint import dataset_fingerprint
from storage.preprocess import PreprocessPlan, case_key_for, plan_for, preprocess_case, version_id_for
from storage.privacy import keyed_case_id, workspace_secret
from storage.raw_dataset import RawCase, load_raw_dataset
from storage.task_store import TaskStore
from storage.verify import check_case, dataset_root, relative


def dask_runner(address: str | None, workers: int) -> DaskTaskRunner:
    """Dask for per-case work: the scheduler at `address`, or a local cluster of single-threaded processes."""
    if address:
        return DaskTaskRunner(address=address)
    return DaskTaskRunner(
        cluster_kwargs={"n_workers": workers, "threads_per_worker": 1, "processes": True, "dashboard_address": None}
    )


def _write_json(path: Path, payload: dict) -> None:
    """Write a JSON file whole or not at all (temporary file, then replace)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(payload, indent=2))
    os.replace(temporary, path)


def _summary_artifact(key: str, title: str, rows: list[dict], failures: list[dict], seconds: float) -> None:
    lines = [f"# {title}", "", f"{seconds:.1f} s", ""]
    if rows:
        lines += ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
        lines += ["| " + " | ".join(str(v) for v in row.values()) + " |" for row in rows]
    lines += ["", f"## Failures ({len(failures)})", ""]
    lines += [f"- {f.get('dataset', '')} {f.get('file', '')}: {f['problem']}" for f in failures]
    create_markdown_artifact("\n".join(lines), key=key, description=title)


@task(name="check-case", retries=2, retry_delay_seconds=1)
def check_case_task(case: RawCase, labels: dict[int, str], root: str) -> tuple[dict | None, list[dict]]:
    record, problems = check_case(case, labels, Path(root))
    return record, [problem.to_dict() for problem in problems]


@flow(name="ingest")
def ingest_flow(sources: list[str], raw_dir: str, secret_path: str) -> dict:
    """Check every case of every source dataset; write one ingest record per dataset with good cases."""
    start = time.monotonic()
    secret = workspace_secret(Path(secret_path))
    rows, failures = [], []
    for source in sources:
        try:
            dataset = load_raw_dataset(Path(source))
        except StorageError as error:
            failures.append({"dataset": Path(source).name, "file": Path(source).name, "problem": str(error)})
            continue
        root = dataset_root(Path(source))
        futures = [check_case_task.submit(case, dataset.labels, str(root)) for case in dataset.cases]
        cases, problems = [], []
        for case, future in zip(dataset.cases, futures, strict=True):
            future.wait()
            state = future.state
            if state.is_completed():
                record, case_problems = future.result()
            else:
                record, case_problems = (
                    None,
                    [
                        {
                            "case": case.case_id,
                            "file": relative(case.image, root),
                            "problem": f"could not be checked: {state.message}",
                        }
                    ],
                )
            problems.extend({"dataset": dataset.name, **p} for p in case_problems)
            if record is not None:
                cases.append({**record, "store_id": keyed_case_id(secret, dataset.name, case.case_id)})
        failures.extend(problems)
        rows.append(
            {
                "dataset": dataset.name,
                "center": dataset.center,
                "modality": dataset.modality,
                "cases": len(cases),
                "rejected": len({p["case"] for p in problems}),
            }
        )
        if not cases:
            continue
        _write_json(
            Path(raw_dir) / f"{dataset.name}.json",
            {
                "dataset": dataset.name,
                "center": dataset.center,
                "modality": dataset.modality,
                "labels": {str(k): v for k, v in dataset.labels.items()},
                "source": str(Path(source).resolve()),
                "fingerprint": dataset_fingerprint(cases),
                "cases": [{k: v for k, v in c.items() if k != "foreground_sample"} for c in cases],
                "rejected": problems,
            },
        )
    _summary_artifact("ingest-summary", "Ingest", rows, failures, time.monotonic() - start)
    return {"datasets": rows, "failures": failures}


def _preprocess_cache_key(_: Any, parameters: dict[str, Any]) -> str:
    p = parameters
    case_key = case_key_for(p["case"], PreprocessPlan.from_dict(p["plan"]))
    # The case id is part of the result, and two cases may share content: it belongs in the key too.
    key = f"{p['store_url']}|{p['dataset']}|{p['case']['store_id']}|{case_key}"
    return "preprocess-" + hashlib.sha256(key.encode()).hexdigest()[:32]


@task(
    name="preprocess-case",
    cache_key_fn=_preprocess_cache_key,
    persist_result=True,
    result_serializer="json",
    retries=2,
    retry_delay_seconds=1,
)
def preprocess_case_task(store_url: str, dataset: str, case: dict, plan: dict) -> list[dict]:
    plan_object = PreprocessPlan.from_dict(plan)
    return preprocess_case(TaskStore.open(store_url, plan_object.resolution), dataset, case, plan_object)


@flow(name="preprocess")
def preprocess_flow(
    raw_dir: str,
    store_url: str,
    resolution: int,
    datasets: list[str] | None = None,
    axes: list[int] | None = None,
    empty_fraction: float = 0.1,
    ct_window: list[float] | None = None,
) -> dict:
    """Harmonize every ingested dataset (or those named) into the store; one new version per changed dataset.

    `ct_window` (low, high in HU) replaces the CT datasets' foreground percentiles for clipping."""
    start = time.monotonic()
    store = TaskStore.open(store_url, resolution, create=True)
    records = [json.loads(p.read_text()) for p in sorted(Path(raw_dir).glob("*.json"))]
    records = [r for r in records if not datasets or r["dataset"] in datasets]
    window = (float(ct_window[0]), float(ct_window[1])) if ct_window else None
    plans = {r["dataset"]: plan_for(r, resolution, tuple(axes or (0, 1, 2)), empty_fraction, window) for r in records}
    futures = {
        r["dataset"]: [
            preprocess_case_task.submit(store_url, r["dataset"], c, plans[r["dataset"]].to_dict()) for c in r["cases"]
        ]
        for r in records
    }
    wait([f for fs in futures.values() for f in fs])
    rows, failures = [], []
    for record in records:
        name, done, keys, summaries = record["dataset"], [], [], []
        for case, future in zip(record["cases"], futures[name], strict=True):
            if future.state.is_completed():
                done.append(case)
                keys.append(case_key_for(case, plans[name]))
                summaries.extend(future.result())
            else:
                failures.append({"dataset": name, "file": Path(case["image"]).name, "problem": future.state.message})
        if not done:
            continue
        kept = {**record, "cases": done}
        version = version_id_for(kept, keys)
        if store.has_complete_version(name, version):
            if name not in store.datasets() or store.current_version(name) != version:
                store.point_current(name, version)
        else:
            store.commit_version(
                name,
                version,
                {
                    "center": record["center"],
                    "modality": record["modality"],
                    "labels": record["labels"],
                    "fingerprint": record["fingerprint"],
                    "normalization": plans[name].normalization.to_dict(),
                    "plan": plans[name].to_dict(),
                    "source_hashes": {
                        c["store_id"]: {"image": c["image_sha256"], "label": c["label_sha256"]} for c in done
                    },
                },
                summaries,
            )
        rows.extend(
            {"dataset": name, "case": s["case"], "axis": s["axis"], "slices": len(s["indices"])} for s in summaries
        )
    return _preprocess_report(store, records, rows, failures, time.monotonic() - start)


def _preprocess_report(
    store: TaskStore, records: list[dict], rows: list[dict], failures: list[dict], seconds: float
) -> dict:
    per_dataset = []
    tasks = store.tasks()
    for record in records:
        name = record["dataset"]
        if name not in store.datasets():
            continue
        slices = sum(r["slices"] for r in rows if r["dataset"] == name)
        per_dataset.append(
            {
                "dataset": name,
                "version": store.current_version(name),
                "cases": len({r["case"] for r in rows if r["dataset"] == name}),
                "tasks": sum(1 for t in tasks if t.dataset == name),
                "slices": slices,
                "bytes": slices * store.resolution**2 * 3,  # float16 image + uint8 label, before compression
            }
        )
    _summary_artifact("preprocess-summary", "Preprocess", per_dataset, failures, seconds)
    return {"datasets": per_dataset, "failures": failures, "seconds": round(seconds, 1)}
