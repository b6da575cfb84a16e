"""Prefect flows of the data stage: `ingest` (check raw datasets) and `preprocess` (write the task store).

- ingest: one task per case reads it once (storage.verify: every problem, with its file relative to the dataset
  root). Good cases get a keyed pseudonym (storage.privacy) and go into the dataset's ingest record (JSON in the
  workspace, storage.ingest_record) with the fingerprint; bad cases (and the description's unusable entries and
  shared case ids, storage.raw_dataset) are reported and left out while every good case still lands, and a source
  that cannot be read, or names a dataset an earlier source of the run named, is reported while the next sources
  are ingested. With `strict`, the records are written only when no case and no source was rejected: one bad
  case lands nothing, so nothing half-ingested becomes visible.
- preprocess: the store's one CT window is pooled from the training labels of every ingested CT dataset
  (storage.ct_window) unless configured, and recorded in the store; every CT dataset whose current version was
  clipped to another window is redone in the same run. Then one task per case harmonizes it into the store, in
  parallel on Dask (a local cluster by default, a scheduler address by configuration), retried on transient
  errors, cached by the case's content key (source hashes + plan + recipe code version) so an unchanged case
  costs nothing. A new dataset version becomes current
  after all its cases are written; a case that fails is reported and left out of it.
Each run returns its report (storage.reports) and ends with it as a Markdown summary artifact (datasets, cases,
tasks, slices, bytes, failures, time). Each case checked or written is one line on the `promptseg.progress` logger,
which the CLI prints.

What Prefect stores names a case by its dataset and pseudonym, never by a source path or case id (those stay in
the ingest records): the sources are secret flow parameters (stored masked), a failure's problem text holds no
path, the summary artifacts list failures by pseudonym, a preprocess task is named by dataset and pseudonym and
fails with `CaseFailed` (dataset, pseudonym, problem) in place of the error that named the file. The progress lines
(not sent to Prefect) and the reports' `Failure.file` still name the file for the person running the command.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.futures import as_completed
from prefect_dask import DaskTaskRunner
from pydantic import BaseModel, SecretStr

from storage.ct_window import store_ct_window
from storage.errors import Problem, RawDataError, StorageError
from storage.ingest_record import CaseRecord, Failure, IngestRecord, load_ingest_records
from storage.preparation import RECIPE_VERSION
from storage.preprocess import PreprocessPlan, case_key_for, commit_dataset_version, plan_for, preprocess_case
from storage.privacy import without_paths, workspace_secret
from storage.raw_dataset import RawCase, RawDataset, load_raw_dataset, relative
from storage.reports import IngestedDataset, IngestReport, PreprocessedDataset, PreprocessReport
from storage.task_store import TaskStore
from storage.verify import CheckedCase, check_case, dataset_root

PROGRESS = logging.getLogger("promptseg.progress")


def dask_runner(address: str | None, workers: int) -> DaskTaskRunner:
    """Dask for per-case work: the scheduler at `address`, or a local cluster of single-threaded processes."""
    if address:
        return DaskTaskRunner(address=address)
    return DaskTaskRunner(
        cluster_kwargs={"n_workers": workers, "threads_per_worker": 1, "processes": True, "dashboard_address": None}
    )


def _summary_artifact(
    key: str, title: str, rows: Sequence[BaseModel], failures: Sequence[Failure], seconds: float
) -> None:
    lines = [f"# {title}", "", f"{seconds:.1f} s", ""]
    if rows:
        columns = list(type(rows[0]).model_fields)
        lines += ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
        lines += ["| " + " | ".join(str(v) for v in row.model_dump().values()) + " |" for row in rows]
    lines += ["", f"## Failures ({len(failures)})", ""]
    lines += [f"- {f.dataset}{f' case {f.case}' if f.case else ''}: {f.problem}" for f in failures]
    create_markdown_artifact("\n".join(lines), key=key, description=title)


@task(name="check-case", retries=2, retry_delay_seconds=1)
def check_case_task(case: RawCase, labels: dict[int, str], root: str) -> tuple[CheckedCase | None, list[Problem]]:
    return check_case(case, labels, Path(root))


def _checked_cases(dataset: RawDataset, root: Path) -> tuple[list[CheckedCase], list[Problem]]:
    """Check every case of `dataset` (one task each): the good ones, and the problems of the description's entries
    and of the bad cases. Each case is one progress line, which names its source case id for the person running
    the command (the progress logger is not Prefect's)."""
    futures = [check_case_task.submit(case, dataset.labels, str(root)) for case in dataset.cases]
    checked: list[CheckedCase] = []
    problems = list(dataset.problems)
    for problem in dataset.problems:
        PROGRESS.info("ingest %s: %s %s rejected (%s)", dataset.name, problem.case, problem.file, problem.problem)
    for number, (case, future) in enumerate(zip(dataset.cases, futures, strict=True), 1):
        future.wait()
        state = future.state
        if state.is_completed():
            result, case_problems = future.result()
        else:  # not a problem of the case's data (check_case reports those): the task itself failed
            text = without_paths(f"could not be checked: {state.message}", [case.image, case.label or ""])
            result, case_problems = None, [Problem(case.case_id, relative(case.image, root), text)]
        problems.extend(case_problems)
        if result is not None:
            checked.append(result)
        verdict = "ok" if result is not None else f"rejected ({case_problems[0].problem})"
        PROGRESS.info("ingest %s: case %d/%d %s %s", dataset.name, number, len(dataset.cases), case.case_id, verdict)
    return checked, problems


@flow(name="ingest")
def ingest_flow(sources: list[SecretStr], raw_dir: str, secret_path: str, strict: bool = False) -> IngestReport:
    """Check every case of every source dataset; write one ingest record per dataset with good cases (with `strict`,
    none unless every case and source is good). The sources are secret parameters: Prefect stores them masked."""
    start = time.monotonic()
    secret = workspace_secret(Path(secret_path))
    rows: list[IngestedDataset] = []
    failures: list[Failure] = []
    records: dict[str, IngestRecord] = {}
    for source in (Path(secret_source.get_secret_value()) for secret_source in sources):
        try:
            dataset = load_raw_dataset(source)
        except StorageError as error:
            problem = error.problem if isinstance(error, RawDataError) else without_paths(str(error), [source])
            failures.append(Failure.unreadable(source, problem, secret))
            PROGRESS.info("ingest %s: rejected (%s)", source, error)
            continue
        if any(row.dataset == dataset.name for row in rows):
            problem = f"another source of this run is dataset {dataset.name!r} too; one record per dataset name"
            failures.append(Failure(dataset=dataset.name, problem=problem, file=str(source)))
            PROGRESS.info("ingest %s: rejected (%s: %s)", source, dataset.name, problem)
            continue
        checked, problems = _checked_cases(dataset, dataset_root(source))
        failures.extend(Failure.from_problem(dataset.name, problem, secret) for problem in problems)
        rows.append(
            IngestedDataset(
                dataset=dataset.name,
                center=dataset.center,
                modality=dataset.modality,
                cases=len(checked),
                rejected=len(dataset.problems) + len(dataset.cases) - len(checked),
            )
        )
        if checked:
            records[dataset.name] = IngestRecord.from_checked(dataset, source, checked, problems, secret)
    if not (strict and failures):
        for record in records.values():
            record.save(Path(raw_dir))
    _summary_artifact("ingest-summary", "Ingest", rows, failures, time.monotonic() - start)
    return IngestReport(datasets=rows, failures=failures)


def _preprocess_cache_key(_: Any, parameters: dict[str, Any]) -> str:
    p = parameters
    case_key = case_key_for(p["case"], p["plan"])
    # The case id is part of the result, and two cases may share content: it belongs in the key too.
    key = f"{p['store_url']}|{p['dataset']}|{p['case'].store_id}|{case_key}"
    return "preprocess-" + hashlib.sha256(key.encode()).hexdigest()[:32]


class CaseFailed(RuntimeError):
    """A case that could not be written, named by dataset and pseudonym only: Prefect stores this message."""


@task(
    name="preprocess-case",
    task_run_name="preprocess-case {dataset} {case.store_id}",
    cache_key_fn=_preprocess_cache_key,
    persist_result=True,
    result_serializer="json",
    retries=2,
    retry_delay_seconds=1,
)
def preprocess_case_task(store_url: str, dataset: str, case: CaseRecord, plan: PreprocessPlan) -> list[dict]:
    """Write one case; a failure is raised again as `CaseFailed` (`<dataset> case <pseudonym>: <problem>`, the
    problem of a source file after its role, `image: ` or `label: `), without the source's paths and without the
    original error, whose message and traceback Prefect would store."""
    try:
        return preprocess_case(TaskStore.open(store_url, plan.resolution), dataset, case, plan)
    except Exception as error:
        if isinstance(error, RawDataError):
            text = f"{'label' if error.path == case.label else 'image'}: {error.problem}"
        else:
            text = without_paths(f"{type(error).__name__}: {error}", [case.image, case.label or ""])
        raise CaseFailed(f"{dataset} case {case.store_id}: {text}") from None


def _case_failure(dataset: str, case: CaseRecord, message: str | None) -> Failure:
    """The report's failure of a case whose task ended in a failed state with `message`."""
    prefix = f"{dataset} case {case.store_id}: "
    problem = (message or "failed").partition(prefix)[2] or message or "failed"
    file = case.label if problem.startswith("label:") and case.label else case.image
    return Failure(dataset=dataset, case=case.store_id, problem=problem, file=file, source_case=case.case)


@flow(name="preprocess")
def preprocess_flow(
    raw_dir: str,
    store_url: str,
    resolution: int,
    datasets: list[str] | None = None,
    axes: list[int] | None = None,
    empty_fraction: float = 0.1,
    ct_window: list[float] | None = None,
    held_out: list[str] | None = None,
) -> PreprocessReport:
    """Harmonize every ingested dataset (or those named, plus the CT datasets a changed window affects) into the
    store; one new version per changed dataset.

    `ct_window` (low, high in HU) is the store's CT window; by default it is pooled from the ingested CT datasets'
    labels outside the `held_out` spec (storage.ct_window)."""
    start = time.monotonic()
    store = TaskStore.open(store_url, resolution, create=True)
    everything = load_ingest_records(Path(raw_dir))
    window = (float(ct_window[0]), float(ct_window[1])) if ct_window else store_ct_window(everything, held_out or [])
    records = [r for r in everything if not datasets or r.dataset in datasets or _window_changed(store, r, window)]
    store.record_preparation(RECIPE_VERSION, window)
    plans = {r.dataset: plan_for(r, resolution, tuple(axes or (0, 1, 2)), empty_fraction, window) for r in records}
    futures = {
        r.dataset: [preprocess_case_task.submit(store_url, r.dataset, c, plans[r.dataset]) for c in r.cases]
        for r in records
    }
    cases = {
        future: (record.dataset, case.case)
        for record in records
        for case, future in zip(record.cases, futures[record.dataset], strict=True)
    }
    for number, future in enumerate(as_completed(list(cases)), 1):
        future.wait()  # its final state, not one the API may still report (e.g. a retry of a failing task)
        dataset, case = cases[future]
        verdict = "written" if future.state.is_completed() else f"failed ({future.state.message})"
        PROGRESS.info("preprocess %s: case %d/%d %s %s", dataset, number, len(cases), case, verdict)
    written: dict[str, list[dict]] = {}
    failures: list[Failure] = []
    for record in records:
        done: list[CaseRecord] = []
        summaries: list[dict] = []
        for case, future in zip(record.cases, futures[record.dataset], strict=True):
            if future.state.is_completed():
                done.append(case)
                summaries.extend(future.result())
            else:
                failures.append(_case_failure(record.dataset, case, future.state.message))
        if done:
            commit_dataset_version(store, record.model_copy(update={"cases": done}), plans[record.dataset], summaries)
            written[record.dataset] = summaries
    return _preprocess_report(store, records, written, failures, time.monotonic() - start)


def _window_changed(store: TaskStore, record: IngestRecord, window: tuple[float, float] | None) -> bool:
    """Whether a CT dataset in the store was clipped to another window than the store's."""
    if window is None or record.modality.upper() != "CT" or record.dataset not in store.datasets():
        return False
    normalization = store.version_info(record.dataset)["normalization"]
    return not np.allclose([normalization["low"], normalization["high"]], window)


def _preprocess_report(
    store: TaskStore,
    records: list[IngestRecord],
    written: dict[str, list[dict]],
    failures: list[Failure],
    seconds: float,
) -> PreprocessReport:
    """Per dataset of the run that the store holds: its current version and what this run wrote of it."""
    tasks = store.tasks()
    rows = []
    for record in records:
        if record.dataset not in store.datasets():
            continue
        summaries = written.get(record.dataset, [])
        slices = sum(len(summary["indices"]) for summary in summaries)
        rows.append(
            PreprocessedDataset(
                dataset=record.dataset,
                version=store.current_version(record.dataset),
                cases=len({summary["case"] for summary in summaries}),
                tasks=sum(1 for t in tasks if t.dataset == record.dataset),
                slices=slices,
                bytes=slices * store.resolution**2 * 3,  # float16 image + uint8 label, before compression
            )
        )
    _summary_artifact("preprocess-summary", "Preprocess", rows, failures, seconds)
    return PreprocessReport(datasets=rows, failures=failures, seconds=round(seconds, 1))
