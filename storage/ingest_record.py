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
         "image": "/abs/...", "label": "/abs/...",   absolute paths; "label": null in an image-only dataset
         "image_sha256": "...", "label_sha256": "...",
         "shape": [64, 64, 32], "spacing": [1.5, 1.5, 3.0],   the image's, RAS order, mm
         "store_id": "c0123456789abcdef"},           the keyed pseudonym the store knows the case by
        ...],
      "rejected": [{"dataset": ..., "case": ..., "file": ..., "problem": ...}, ...],  the bad cases, with why
      "labelled": false,                             only for an image-only dataset (written only then)
      "licence": "Apache-2.0"                        the data's terms as the source states them (only when stated)
    }

A record is written whole or not at all (a temporary file, then a replace), and only for a dataset with at least
one good case. Keys this code does not know are ignored, so a record written by an earlier version of the workspace
(or one whose cases still carry extra keys) loads as it is; `rejected` may be absent. Records are the only place
source case ids and paths are kept: the folder and every record are owner-only (0700, 0600); the store only ever
sees `store_id`.

A `Failure` is how the flows' reports name what was left out: the dataset (for a source that could not be read at
all, the source's pseudonym), the case's pseudonym (None for a whole source) and the problem. Reports end up stored
by Prefect (artifacts) and MLflow (the nightly report), so the source file and case id a failure also carries for
the person running the command (the CLI prints them) are left out of every serialization of it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Collection, Sequence
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, SerializerFunctionWrapHandler, model_serializer

from storage.errors import Problem
from storage.fingerprint import Fingerprint, dataset_fingerprint
from storage.privacy import keyed_case_id, keyed_source_id
from storage.raw_dataset import RawDataset
from storage.verify import CheckedCase, SourceCase

RECORD_MODE = 0o600
RECORDS_FOLDER_MODE = 0o700


class CaseRecord(SourceCase):
    """One good case of an ingest record: its source facts and the pseudonym the store knows it by."""

    store_id: str


class Rejection(BaseModel):
    """A case an ingest record's dataset left out: its source case id, its file (relative to the dataset root
    where it lies below it) and the reason."""

    model_config = ConfigDict(frozen=True)

    dataset: str
    case: str | None = None
    file: str
    problem: str

    @classmethod
    def from_problem(cls, dataset: str, problem: Problem) -> Rejection:
        return cls(dataset=dataset, case=problem.case, file=problem.file, problem=problem.problem)


class Failure(BaseModel):
    """Something that kept data out of the store, as reports name it: the dataset, the case's keyed pseudonym
    (None: the whole source) and the reason. `file` (relative to the dataset root, or the source) and
    `source_case` are for the person running the command and never serialized."""

    model_config = ConfigDict(frozen=True)

    dataset: str
    case: str | None = None
    problem: str
    file: str = Field("", exclude=True)
    source_case: str | None = Field(None, exclude=True)

    @classmethod
    def from_problem(cls, dataset: str, problem: Problem, secret: bytes) -> Failure:
        """The failure of a checked case (or, with `problem.case` None, of its source), named by its pseudonym."""
        case = keyed_case_id(secret, dataset, problem.case) if problem.case is not None else None
        return cls(dataset=dataset, case=case, problem=problem.problem, file=problem.file, source_case=problem.case)

    @classmethod
    def unreadable(cls, source: Path, problem: str, secret: bytes) -> Failure:
        """The failure of a source that could not be read: with no dataset name to go by, its `dataset` is the
        source's pseudonym."""
        return cls(dataset=keyed_source_id(secret, source), problem=problem, file=str(source))


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
    rejected: list[Rejection] = []
    labelled: bool = True
    licence: str = ""

    @model_serializer(mode="wrap")
    def _defaults_left_out(self, handler: SerializerFunctionWrapHandler) -> dict:
        """A labelled dataset without a stated licence is written as before either field existed (its ids hash the
        same)."""
        data = handler(self)
        if data.get("labelled", True):
            data.pop("labelled", None)
        if not data.get("licence"):
            data.pop("licence", None)
        return data

    @classmethod
    def from_checked(
        cls,
        dataset: RawDataset,
        source: Path,
        checked: Sequence[CheckedCase],
        rejected: Sequence[Problem],
        secret: bytes,
    ) -> IngestRecord:
        """The record of `dataset` (read from `source`) with its good cases, each named by its keyed pseudonym under
        the workspace `secret`, and the problems of the others."""
        sources = [case.source for case in checked]
        return cls(
            dataset=dataset.name,
            center=dataset.center,
            modality=dataset.modality,
            labels={str(value): name for value, name in dataset.labels.items()},
            source=str(Path(source).absolute()),
            fingerprint=dataset_fingerprint(
                [s.shape for s in sources], [s.spacing for s in sources], [c.label_samples for c in checked]
            ),
            cases=[CaseRecord(**s.model_dump(), store_id=keyed_case_id(secret, dataset.name, s.case)) for s in sources],
            rejected=[Rejection.from_problem(dataset.name, problem) for problem in rejected],
            labelled=dataset.labelled,
            licence=dataset.licence,
        )

    @classmethod
    def load(cls, path: Path) -> IngestRecord:
        return cls.model_validate(json.loads(Path(path).read_text()))

    def save(self, raw_dir: Path) -> Path:
        """Write `<raw_dir>/<dataset>.json` whole or not at all, readable by its owner only; returns its path."""
        folder = Path(raw_dir)
        folder.mkdir(mode=RECORDS_FOLDER_MODE, parents=True, exist_ok=True)
        folder.chmod(RECORDS_FOLDER_MODE)
        path = folder / f"{self.dataset}.json"
        temporary = path.with_suffix(".tmp")
        temporary.unlink(missing_ok=True)  # a leftover of a killed run may have another mode
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, RECORD_MODE)
        with os.fdopen(descriptor, "w") as handle:
            handle.write(json.dumps(self.model_dump(), indent=2))
        os.replace(temporary, path)
        return path


def load_ingest_records(raw_dir: Path, datasets: Collection[str] | None = None) -> list[IngestRecord]:
    """Every ingest record in `raw_dir` (only those of `datasets` when given), in file name order."""
    records = [IngestRecord.load(path) for path in sorted(Path(raw_dir).glob("*.json"))]
    return [record for record in records if not datasets or record.dataset in datasets]
