"""The multi-center simulator: determinism, per-center geometry and formats, DICOM series headers, manifests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from PIL import Image

from storage.raw_dataset import RawDataset, load_raw_dataset
from storage.synthetic import write_synthetic_datasets
from storage.synthetic.anatomy import CENTERS, DEFAULT_SHAPE, LABELS, synthesize_case

SEED = 5
N_CASES = 6


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """The default dataset size (6 cases × 3 centers), written once."""
    return write_synthetic_datasets(tmp_path_factory.mktemp("synthetic"), n_cases=N_CASES, seed=SEED)


@pytest.fixture(scope="module")
def datasets(written: list[Path]) -> list[RawDataset]:
    return [load_raw_dataset(source) for source in written]


def _read(path: Path) -> sitk.Image:
    """A volume file or a DICOM series folder, in its stored voxel order."""
    if path.is_dir():
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(path)))
        return reader.Execute()
    return sitk.ReadImage(str(path))


def _ras(image: sitk.Image) -> np.ndarray:
    """The voxels reoriented to RAS, indexed [x, y, z] like the generator's arrays."""
    return sitk.GetArrayFromImage(sitk.DICOMOrient(image, "RAS")).transpose(2, 1, 0)


def _orientation(image: sitk.Image) -> str:
    return sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(image.GetDirection())


def test_sources_and_manifests(written: list[Path], datasets: list[RawDataset]) -> None:
    sources = written
    assert sources[0].is_dir() and (sources[0] / "dataset.json").is_file()
    assert [source.name for source in sources[1:]] == ["manifest.yaml", "manifest.yaml"]
    for center, dataset in zip(CENTERS, datasets, strict=True):
        assert (dataset.name, dataset.center, dataset.modality) == (
            f"synth-{center.name}",
            center.name,
            center.modality,
        )
        assert dataset.labels == {value: name for name, value in LABELS.items()}
        assert [case.case_id for case in dataset.cases] == [f"{center.name}_{i:03d}" for i in range(N_CASES)]
        for case in dataset.cases:
            assert case.image.exists() and case.label.is_file()
    assert all(case.image.name.endswith("_0000.nii.gz") for case in datasets[0].cases)
    assert all(case.image.suffix == ".nrrd" for case in datasets[1].cases)
    assert all(case.label.name.endswith(".seg.nrrd") for dataset in datasets[1:] for case in dataset.cases)
    assert all(case.image.is_dir() and any(case.image.glob("*.dcm")) for case in datasets[2].cases)


def test_read_back_reoriented_equals_the_generated_cases(datasets: list[RawDataset]) -> None:
    """Every reader that reorients to RAS sees the same anatomy as generated, whatever the center's voxel order."""
    for center, dataset in zip(CENTERS, datasets, strict=True):
        rng = np.random.default_rng([SEED, CENTERS.index(center)])
        for case in dataset.cases:
            image, label = synthesize_case(center, rng, center.grid(DEFAULT_SHAPE))
            label_image = _read(case.label)
            assert _orientation(label_image) == center.orientation
            read_label = _ras(label_image)
            assert np.array_equal(read_label, label), f"{case.case_id}: label differs after reorientation"
            assert set(np.unique(read_label)) == {0, *LABELS.values()}
            read_image = _read(case.image)
            np.testing.assert_allclose(read_image.GetOrigin(), label_image.GetOrigin(), atol=1e-3)
            assert read_image.GetDirection() == label_image.GetDirection()
            np.testing.assert_allclose(sitk.DICOMOrient(read_image, "RAS").GetSpacing(), center.spacing)
            expected = np.round(image) if center.file_format == "dicom" else image
            assert np.array_equal(_ras(read_image), expected), f"{case.case_id}: image differs after reorientation"


def test_same_seed_same_pixels_and_uids(datasets: list[RawDataset], tmp_path: Path) -> None:
    again = [load_raw_dataset(source) for source in write_synthetic_datasets(tmp_path, n_cases=2, seed=SEED)]
    for first, second in zip(datasets, again, strict=True):
        for one, other in zip(first.cases, second.cases, strict=False):
            for path_one, path_other in ((one.image, other.image), (one.label, other.label)):
                assert np.array_equal(_ras(_read(path_one)), _ras(_read(path_other)))
    for one, other in zip(datasets[2].cases, again[2].cases, strict=False):
        for path in one.image.glob("*.dcm"):
            first_header, second_header = pydicom.dcmread(path), pydicom.dcmread(other.image / path.name)
            for keyword in ("SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID", "FrameOfReferenceUID"):
                assert first_header[keyword].value == second_header[keyword].value


def test_cases_vary_within_a_center(datasets: list[RawDataset]) -> None:
    for dataset in datasets:
        first, second = (_ras(_read(case.label)) for case in dataset.cases[:2])
        for value in LABELS.values():
            assert not np.array_equal(first == value, second == value), f"{dataset.name}: label {value} repeats"


def test_centers_differ_in_geometry_noise_and_contrast(datasets: list[RawDataset]) -> None:
    images = [_read(dataset.cases[0].image) for dataset in datasets]
    labels = [_ras(_read(dataset.cases[0].label)) for dataset in datasets]
    spacings = [sitk.DICOMOrient(image, "RAS").GetSpacing() for image in images]
    assert len(set(spacings)) == len(CENTERS)
    assert len({array.shape[2] for array in labels}) == len(CENTERS)  # slice count follows the slice thickness
    assert {_orientation(image) for image in images[1:]}.isdisjoint({"LPS", "RAS"})  # non-RAS storage, permuted too
    arrays = [_ras(image).astype(np.float64) for image in images]
    medians = [
        {name: np.median(a[label == value]) for name, value in LABELS.items()}
        for a, label in zip(arrays, labels, strict=True)
    ]
    ct, mr_b, mr_c = arrays
    assert ct.min() < -500 and mr_b.min() > -200 and mr_c.min() >= 0  # air in HU; MR magnitude never negative
    assert medians[0]["spine"] > medians[0]["liver"] and medians[1]["spine"] < medians[1]["liver"]
    assert medians[1]["vessel"] > medians[1]["liver"] and medians[2]["vessel"] < medians[2]["liver"]
    assert medians[2]["lesion"] > 2 * medians[1]["lesion"]  # a different global scale
    corner = (slice(0, 6), slice(0, 6))  # outside the body in every slice
    noise = [np.std(a[corner]) for a in arrays]
    assert noise[0] < noise[1] < noise[2]


def test_dicom_series_is_geometric_and_file_names_are_shuffled(datasets: list[RawDataset]) -> None:
    center = CENTERS[2]
    for case in datasets[2].cases:
        files = sorted(case.image.glob("*.dcm"))
        headers = [pydicom.dcmread(path) for path in files]
        assert {header.Modality for header in headers} == {"MR"}
        row, column = np.reshape(np.array(headers[0].ImageOrientationPatient, float), (2, 3))
        normal = np.cross(row, column)
        assert all(
            np.allclose(header.ImageOrientationPatient, headers[0].ImageOrientationPatient) for header in headers
        )
        assert all(np.allclose(header.PixelSpacing, center.spacing[:2]) for header in headers)
        assert {float(header.SliceThickness) for header in headers} == {center.spacing[2]}
        positions = np.array([header.ImagePositionPatient for header in headers], float)
        order = np.argsort(positions @ normal)
        steps = np.diff(positions[order], axis=0)
        np.testing.assert_allclose(steps, np.tile(center.spacing[2] * normal, (len(files) - 1, 1)), atol=1e-4)
        assert [headers[i].InstanceNumber for i in order] == list(range(1, len(files) + 1))
        assert order.tolist() != list(range(len(files))), "file names should not follow the slice order"


def test_patient_identity_only_when_asked(datasets: list[RawDataset], tmp_path: Path) -> None:
    for path in datasets[2].cases[0].image.glob("*.dcm"):
        header = pydicom.dcmread(path)
        assert not header.get("PatientName") and not header.get("PatientID")
    sources = write_synthetic_datasets(tmp_path, n_cases=1, seed=SEED, patient_name="Doe^Jane", patient_id="PID-0042")
    [case] = load_raw_dataset(sources[2]).cases
    for path in case.image.glob("*.dcm"):
        header = pydicom.dcmread(path)
        assert (str(header.PatientName), header.PatientID) == ("Doe^Jane", "PID-0042")


def test_png_variant(tmp_path: Path) -> None:
    sources = write_synthetic_datasets(tmp_path, n_cases=2, seed=SEED, png=True)
    assert len(sources) == 2 * len(CENTERS)
    for center, source in zip(CENTERS, sources[len(CENTERS) :], strict=True):
        dataset = load_raw_dataset(source)
        assert (dataset.name, dataset.center, len(dataset.cases)) == (f"synth-{center.name}-png", center.name, 2)
        for case in dataset.cases:
            image, label = np.array(Image.open(case.image)), np.array(Image.open(case.label))
            assert image.dtype == np.uint8 and image.shape == label.shape == DEFAULT_SHAPE[:2]
            assert image.max() > image.min()
            assert set(np.unique(label)) <= {0, *LABELS.values()} and len(np.unique(label)) >= 4
