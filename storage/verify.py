"""Checking raw cases before anything is written, as nnU-Net's dataset verifier does.

`check_case` reads one case once and returns every problem it finds (files missing, unreadable or behind a symbolic
link loop, NaN/Inf voxels, fractional label values, zero or negative spacing, unevenly spaced DICOM slices,
image/label shape, spacing or affine disagreement, label values outside the declared labels, an empty label map),
each naming its file relative to the dataset root; it never raises for a bad case. A case of an image-only
dataset (storage.raw_dataset: `labelled: false`) may have no label; its image is checked alone. When a case has no
problem it also returns it as a `CheckedCase`: the `SourceCase` facts its ingest record keeps (sources, content
hashes, geometry; storage.ingest_record) and an intensity sample for the dataset fingerprint.
`verify_dataset` runs it on every case and adds the description's own problems (storage.raw_dataset: unusable
entries, shared case ids); `promptseg verify` prints the result, ingest reports and skips bad cases.
Problem texts never hold the case's paths (`storage.privacy.without_paths`): they are stored where paths must not go.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict

from storage.errors import Problem, RawDataError
from storage.fingerprint import image_samples, label_samples
from storage.privacy import without_paths
from storage.raw_dataset import RawCase, RawDataset, load_raw_dataset, relative
from storage.readers import Volume, read_volume, source_sha256

__all__ = ["CheckedCase", "Problem", "SourceCase", "check_case", "dataset_root", "relative", "verify_dataset"]

SPACING_RANGE_MM = (0.01, 50.0)
AFFINE_TOLERANCE_MM = 1e-2


class SourceCase(BaseModel):
    """One good source case as ingest records it: its source id and files (no label in an image-only dataset),
    their content hashes (SHA-256) and the image's RAS shape and spacing (mm)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    case: str
    image: str
    label: str | None
    image_sha256: str
    label_sha256: str | None
    shape: list[int]
    spacing: list[float]


@dataclass(frozen=True)
class CheckedCase:
    """A case without problems: its facts and a sample of each label's intensities (storage.fingerprint; of the
    whole image under 0 for an image-only case), which only the dataset fingerprint uses (the ingest record does
    not keep them)."""

    source: SourceCase
    label_samples: dict[int, list[float]]


def _reported(case: RawCase, path: Path, root: Path, error: Exception) -> Problem:
    """A caught error as the case's problem: a RawDataError's own text, anything else by its type; no path in it."""
    if isinstance(error, RawDataError):
        return Problem(case.case_id, relative(path, root), error.problem)
    paths = [case.image, *([case.label] if case.label else [])]
    text = without_paths(f"could not be read ({type(error).__name__}: {error})", paths)
    return Problem(case.case_id, relative(path, root), text)


def _read(case: RawCase, path: Path, dtype: type, root: Path, problems: list[Problem]) -> Volume | None:
    try:
        return read_volume(path, dtype=dtype)
    except Exception as error:  # a bad case is reported, whatever its files do to the libraries reading them
        problems.append(_reported(case, path, root, error))
        return None


def _sha256(case: RawCase, path: Path, root: Path, problems: list[Problem]) -> str:
    try:
        return source_sha256(path)
    except Exception as error:  # a file that went away or turned unreadable since it was read
        problems.append(_reported(case, path, root, error))
        return ""


def _label_problems(case: RawCase, image: Volume, label: Volume, labels: dict[int, str], root: Path) -> list[Problem]:
    """What is wrong with a readable label map for a readable image."""
    label_file = relative(case.label, root)
    problems = []
    if image.array.shape != label.array.shape:
        shapes = f"label shape {label.array.shape} differs from image shape {image.array.shape}"
        problems.append(Problem(case.case_id, label_file, shapes))
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
    values = set(np.unique(label.array).tolist())
    unknown = sorted(values - set(labels) - {0})
    if unknown:
        problems.append(
            Problem(case.case_id, label_file, f"label values {unknown} are not declared in the dataset's labels")
        )
    if values <= {0}:
        problems.append(Problem(case.case_id, label_file, "label map is empty"))
    return problems


def check_case(case: RawCase, labels: dict[int, str], root: Path) -> tuple[CheckedCase | None, list[Problem]]:
    """(the checked case, or None when it has problems; every problem found). A case without a label is checked
    as an image-only case: only an image-only dataset lists one (storage.raw_dataset)."""
    problems: list[Problem] = []
    image = _read(case, case.image, np.float32, root, problems)
    label = _read(case, case.label, np.int32, root, problems) if case.label is not None else None
    if image is None or (case.label is not None and label is None):
        return None, problems
    if label is not None:
        problems.extend(_label_problems(case, image, label, labels, root))
    low, high = SPACING_RANGE_MM
    if not all(low <= s <= high for s in image.spacing):
        problems.append(
            Problem(
                case.case_id,
                relative(case.image, root),
                f"implausible spacing {image.spacing} mm (expected {low}-{high})",
            )
        )
    if problems:
        return None, problems
    image_sha256 = _sha256(case, case.image, root, problems)
    label_sha256 = _sha256(case, case.label, root, problems) if case.label is not None else None
    if problems:
        return None, problems
    source = SourceCase(
        case=case.case_id,
        image=str(case.image),
        label=str(case.label) if case.label is not None else None,
        image_sha256=image_sha256,
        label_sha256=label_sha256,
        shape=list(image.array.shape),
        spacing=list(image.spacing),
    )
    samples = label_samples(image.array, label.array, seed=0) if label is not None else image_samples(image.array, 0)
    return CheckedCase(source, samples), []


def dataset_root(source: Path) -> Path:
    """The folder case paths are reported relative to: the MSD folder, or the manifest's folder."""
    source = Path(source).absolute()
    return source if source.is_dir() else source.parent


def verify_dataset(source: Path) -> tuple[RawDataset, list[Problem]]:
    """Every problem of the description and of every case of a raw dataset (an empty list: ready to ingest)."""
    dataset = load_raw_dataset(source)
    root = dataset_root(source)
    problems = list(dataset.problems)
    for case in dataset.cases:
        problems.extend(check_case(case, dataset.labels, root)[1])
    return dataset, problems
