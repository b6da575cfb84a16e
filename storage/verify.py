"""Checking raw cases before anything is written, as nnU-Net's dataset verifier does.

`check_case` reads one case once and returns every problem it finds (files missing or unreadable, NaN/Inf voxels,
zero or negative spacing, image/label shape, spacing or affine disagreement, label values outside the declared
labels, an empty label map), each naming its file relative to the dataset root. When a case has no problem it also
returns it as a `CheckedCase`: the `SourceCase` facts its ingest record keeps (sources, content hashes, geometry;
storage.ingest_record) and a foreground intensity sample for the dataset fingerprint.
`verify_dataset` runs it on every case; `promptseg verify` prints the result, ingest reports and skips bad cases.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict

from storage.errors import RawDataError
from storage.fingerprint import label_samples
from storage.raw_dataset import RawCase, RawDataset, load_raw_dataset
from storage.readers import Volume, read_volume, source_sha256

SPACING_RANGE_MM = (0.01, 50.0)
AFFINE_TOLERANCE_MM = 1e-2


@dataclass(frozen=True)
class Problem:
    case: str
    file: str
    problem: str

    def to_dict(self) -> dict:
        return asdict(self)


class SourceCase(BaseModel):
    """One good source case as ingest records it: its source id and files, their content hashes (SHA-256) and the
    image's RAS shape and spacing (mm)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    case: str
    image: str
    label: str
    image_sha256: str
    label_sha256: str
    shape: list[int]
    spacing: list[float]


@dataclass(frozen=True)
class CheckedCase:
    """A case without problems: its facts and a sample of each label's intensities (storage.fingerprint), which only
    the dataset fingerprint uses (the ingest record does not keep them)."""

    source: SourceCase
    label_samples: dict[int, list[float]]


def relative(path: Path, root: Path) -> str:
    """A path as reported: relative to the dataset root where it lies below it."""
    try:
        return str(Path(path).resolve().relative_to(root.resolve()))
    except ValueError:
        return Path(path).name


def _read(path: Path, dtype: type, case: str, root: Path, problems: list[Problem]) -> Volume | None:
    try:
        return read_volume(path, dtype=dtype)
    except RawDataError as error:
        problems.append(Problem(case, relative(path, root), error.problem))
        return None


def check_case(case: RawCase, labels: dict[int, str], root: Path) -> tuple[CheckedCase | None, list[Problem]]:
    """(the checked case, or None when it has problems; every problem found)."""
    problems: list[Problem] = []
    image = _read(case.image, np.float32, case.case_id, root, problems)
    label = _read(case.label, np.int32, case.case_id, root, problems)
    if image is None or label is None:
        return None, problems
    label_file = relative(case.label, root)
    if image.array.shape != label.array.shape:
        problems.append(
            Problem(
                case.case_id,
                label_file,
                f"label shape {label.array.shape} differs from image shape {image.array.shape}",
            )
        )
    elif not np.allclose(image.spacing, label.spacing, rtol=1e-3):
        problems.append(
            Problem(
                case.case_id, label_file, f"label spacing {label.spacing} differs from image spacing {image.spacing}"
            )
        )
    elif (
        image.affine is not None
        and label.affine is not None
        and not np.allclose(image.affine, label.affine, atol=AFFINE_TOLERANCE_MM)
    ):
        problems.append(Problem(case.case_id, label_file, "label affine (origin/orientation) differs from image's"))
    low, high = SPACING_RANGE_MM
    if not all(low <= s <= high for s in image.spacing):
        problems.append(
            Problem(
                case.case_id,
                relative(case.image, root),
                f"implausible spacing {image.spacing} mm (expected {low}-{high})",
            )
        )
    values = set(np.unique(label.array).tolist())
    unknown = sorted(values - set(labels) - {0})
    if unknown:
        problems.append(
            Problem(case.case_id, label_file, f"label values {unknown} are not declared in the dataset's labels")
        )
    if values <= {0}:
        problems.append(Problem(case.case_id, label_file, "label map is empty"))
    if problems:
        return None, problems
    source = SourceCase(
        case=case.case_id,
        image=str(case.image),
        label=str(case.label),
        image_sha256=source_sha256(case.image),
        label_sha256=source_sha256(case.label),
        shape=list(image.array.shape),
        spacing=list(image.spacing),
    )
    return CheckedCase(source, label_samples(image.array, label.array, seed=0)), []


def dataset_root(source: Path) -> Path:
    """The folder case paths are reported relative to: the MSD folder, or the manifest's folder."""
    source = Path(source)
    return source if source.is_dir() else source.parent


def verify_dataset(source: Path) -> tuple[RawDataset, list[Problem]]:
    """Every problem of every case of a raw dataset (an empty list: ready to ingest)."""
    dataset = load_raw_dataset(source)
    root = dataset_root(source)
    problems = []
    for case in dataset.cases:
        problems.extend(check_case(case, dataset.labels, root)[1])
    return dataset, problems
