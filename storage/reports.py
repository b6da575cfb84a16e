"""What the data stage's flows report (pipelines.flows): one row per dataset and every failure.

`IngestReport` (ingest): per dataset its center, modality and how many cases were ingested and rejected; the failures
are those of whole sources (no `case`: the source could not be read at all) and of single cases.
`PreprocessReport` (preprocess): per dataset in the store its current version and how many cases, tasks and slices
it holds, the bytes those slices take before compression, the cases that failed and the run's duration.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from storage.ingest_record import Failure


class IngestedDataset(BaseModel):
    model_config = ConfigDict(frozen=True)

    dataset: str
    center: str
    modality: str
    cases: int
    rejected: int


class IngestReport(BaseModel):
    model_config = ConfigDict(frozen=True)

    datasets: list[IngestedDataset]
    failures: list[Failure]


class PreprocessedDataset(BaseModel):
    model_config = ConfigDict(frozen=True)

    dataset: str
    version: str
    cases: int
    tasks: int
    slices: int
    bytes: int


class PreprocessReport(BaseModel):
    model_config = ConfigDict(frozen=True)

    datasets: list[PreprocessedDataset]
    failures: list[Failure]
    seconds: float
