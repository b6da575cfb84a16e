"""The ingest record: the hand-off from ingest to preprocess, one JSON file per dataset in the workspace.

Contract. `<workspace>/raw/<dataset>.json` is written by the ingest flow (pipelines.flows.ingest_flow) and read by
the preprocess flow and storage.preprocess (plan, case keys, version ids), the nightly pipeline (its sources) and
the benchmarks, always through `IngestRecord`::

    {
      "dataset": "synth-center-a",                   the dataset's name (the store's dataset group)
      "center": "center-a", "modality": "CT",
      "labels": {"1": "liver", ...},                 label value (a string, as JSON keys are) → name
      "source": "/abs/path/synth-center-a",          the raw dataset read: MSD folder or manifest file
      "fingerprint": {...},                          storage.fingerprint.Fingerprint of the good cases
      "cases": [                                     the good cases only
        {"case": "center-a_000",                     source case id and files (never copied into the store)
         "image": "/abs/...", "label": "/abs/...",
         "image_sha256": "...", "label_sha256": "...",
         "shape": [64, 64, 32], "spacing": [1.5, 1.5, 3.0],   the image's, RAS order, mm
         "store_id": "c0123456789abcdef"},           the keyed pseudonym the store knows the case by
        ...],
      "rejected": [{"dataset": ..., "case": ..., "file": ..., "problem": ...}, ...]   the bad cases, with why
    }

A record is written whole or not at all (a temporary file, then a replace), and only for a dataset with at least
one good case. Keys this code does not know are ignored, so a record written by an earlier version of the workspace
(or one whose cases still carry extra keys) loads as it is; `rejected` may be absent. Source case ids and paths
stay in the workspace: the store only ever sees `store_id`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Collection, Sequence
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from storage.fingerprint import Fingerprint, dataset_fingerprint
from storage.privacy import keyed_case_id
from storage.raw_dataset import RawDataset
from storage.verify import CheckedCase, Problem, SourceCase


class CaseRecord(SourceCase):
    """One good case of an ingest record: its source facts and the pseudonym the store knows it by."""

    store_id: str


class Failure(BaseModel):
    """Something that kept data out of the store: a whole source (no `case`) or one case, with its file (relative
    to the dataset root where it lies below it) and the reason."""

    model_config = ConfigDict(frozen=True)

    dataset: str
    case: str | None = None
    file: str
    problem: str

    @classmethod
    def from_problem(cls, dataset: str, problem: Problem) -> Failure:
        return cls(dataset=dataset, case=problem.case, file=problem.file, problem=problem.problem)


class IngestRecord(BaseModel):
    """One ingested dataset (the module docstring is its contract)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    dataset: str
    center: str
    modality: str
    labels: dict[str, str]
    source: str
    fingerprint: Fingerprint
    cases: list[CaseRecord]
    rejected: list[Failure] = []

    @classmethod
    def from_checked(
        cls,
        dataset: RawDataset,
        source: Path,
        checked: Sequence[CheckedCase],
        rejected: Sequence[Failure],
        secret: bytes,
    ) -> IngestRecord:
        """The record of `dataset` (read from `source`) with its good cases, each named by its keyed pseudonym under
        the workspace `secret`, and the failures of the others."""
        sources = [case.source for case in checked]
        return cls(
            dataset=dataset.name,
            center=dataset.center,
            modality=dataset.modality,
            labels={str(value): name for value, name in dataset.labels.items()},
            source=str(Path(source).resolve()),
            fingerprint=dataset_fingerprint(
                [s.shape for s in sources], [s.spacing for s in sources], [c.label_samples for c in checked]
            ),
            cases=[CaseRecord(**s.model_dump(), store_id=keyed_case_id(secret, dataset.name, s.case)) for s in sources],
            rejected=list(rejected),
        )

    @classmethod
    def load(cls, path: Path) -> IngestRecord:
        return cls.model_validate(json.loads(Path(path).read_text()))

    def save(self, raw_dir: Path) -> Path:
        """Write `<raw_dir>/<dataset>.json` whole or not at all; returns its path."""
        path = Path(raw_dir) / f"{self.dataset}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_suffix(".tmp")
        temporary.write_text(json.dumps(self.model_dump(), indent=2))
        os.replace(temporary, path)
        return path


def load_ingest_records(raw_dir: Path, datasets: Collection[str] | None = None) -> list[IngestRecord]:
    """Every ingest record in `raw_dir` (only those of `datasets` when given), in file name order."""
    records = [IngestRecord.load(path) for path in sorted(Path(raw_dir).glob("*.json"))]
    return [record for record in records if not datasets or record.dataset in datasets]
