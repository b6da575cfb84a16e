"""The raw-volume readers: round trips per format, one RAS convention across formats, DICOM order and privacy, guards.

Every fixture is generated in tmp_path: NIfTI with nibabel, NRRD and DICOM series with SimpleITK, 2D images with
Pillow.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import locale
import shutil
import struct
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import yaml
from PIL import Image

from storage.errors import RawDataError
from storage.raw_dataset import load_raw_dataset
from storage.readers import READERS, read_volume, reader_for, source_sha256
from storage.readers.dicom import DicomSeriesReader
from storage.readers.nifti import NiftiReader
from storage.readers.nrrd import NrrdReader
from storage.readers.png import PngReader

SERIES_UID = "1.2.826.0.1.3680043.2.1125.1.4242"

# Axis 0 → Anterior, axis 1 → Inferior, axis 2 → Right: permuted, flipped and left-handed, so DICOM must re-sort its
# slices. Spacings and origin are dyadic, so DICOM's decimal strings carry them exactly.
PERMUTED_AFFINE = np.array(
    [
        [0.0, 0.0, 2.5, -12.5],
        [0.75, 0.0, 0.0, 20.25],
        [0.0, -1.25, 0.0, 30.5],
        [0.0, 0.0, 0.0, 1.0],
    ]
)


def _write_nifti(path: Path, data: np.ndarray, affine: np.ndarray) -> Path:
    image = nib.Nifti1Image(data, affine)
    image.header.set_qform(affine, code=1)
    image.header.set_sform(affine, code=1)
    nib.save(image, path)
    return path


def _write_dicom_series(
    image: sitk.Image,
    folder: Path,
    names: list[str] | None = None,
    series_uid: str = SERIES_UID,
    modality: str = "CT",
    shifts_mm: list[float] | None = None,
) -> Path:
    """One file per slice with the geometry tags a scanner writes (and a patient name and id, to prove none leak);
    `shifts_mm` moves each slice's position along the slice axis. GDCM's writer sets the C locale, which would make
    later text reads ASCII-only: the locale is restored."""
    ctype = locale.setlocale(locale.LC_CTYPE)
    try:
        return _write_slices(image, folder, names, series_uid, modality, shifts_mm or [0.0] * image.GetSize()[2])
    finally:
        locale.setlocale(locale.LC_CTYPE, ctype)


def _write_slices(
    image: sitk.Image, folder: Path, names: list[str] | None, series_uid: str, modality: str, shifts_mm: list[float]
) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    depth = image.GetSize()[2]
    names = names or [f"slice{k:03d}.dcm" for k in range(depth)]
    direction = image.GetDirection()
    orientation = (direction[0], direction[3], direction[6], direction[1], direction[4], direction[7])
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k in range(depth):
        slice_ = image[:, :, k]
        tags = {
            "0008|0008": "DERIVED\\SECONDARY",
            "0008|0060": modality,
            "0010|0010": "DOE^JANE",
            "0010|0020": "MRN-0042",
            "0010|0030": "19700101",
            "0020|000d": series_uid + ".1",
            "0020|000e": series_uid,
            "0020|0013": str(k + 1),
            "0020|0032": "\\".join(f"{c:g}" for c in _position(image, k, shifts_mm[k])),
            "0020|0037": "\\".join(f"{c:g}" for c in orientation),
            "0018|0050": f"{image.GetSpacing()[2]:g}",
        }
        for tag, value in tags.items():
            slice_.SetMetaData(tag, value)
        writer.SetFileName(str(folder / names[k]))
        writer.Execute(slice_)
    return folder


def _position(image: sitk.Image, k: int, shift_mm: float) -> np.ndarray:
    normal = np.asarray(image.GetDirection()).reshape(3, 3)[:, 2]
    return np.asarray(image.TransformIndexToPhysicalPoint((0, 0, k))) + shift_mm * normal


@pytest.fixture
def permuted_nifti(tmp_path: Path) -> Path:
    data = np.random.default_rng(0).integers(-1000, 1000, size=(5, 6, 7)).astype(np.int16)
    return _write_nifti(tmp_path / "permuted.nii.gz", data, PERMUTED_AFFINE)


def _expect_refusal(path: Path, problem: str) -> RawDataError:
    with pytest.raises(RawDataError, match=problem) as caught:
        read_volume(path)
    assert caught.value.path == str(path)
    return caught.value


def test_registry_dispatch(tmp_path: Path) -> None:
    assert [type(reader) for reader in READERS] == [NiftiReader, NrrdReader, DicomSeriesReader, PngReader]
    assert isinstance(reader_for(Path("a/IMAGE.NII.GZ")), NiftiReader)
    assert isinstance(reader_for(Path("a/b.nii")), NiftiReader)
    assert isinstance(reader_for(Path("a/b.seg.nrrd")), NrrdReader)
    assert isinstance(reader_for(Path("a/b.tiff")), PngReader)
    assert isinstance(reader_for(tmp_path), DicomSeriesReader)


def test_nifti_round_trip(tmp_path: Path) -> None:
    data = np.random.default_rng(1).normal(size=(4, 5, 6)).astype(np.float32)
    path = _write_nifti(tmp_path / "image.nii", data, np.diag([0.5, 0.75, 2.0, 1.0]))
    volume = read_volume(path)
    assert np.array_equal(volume.array, data) and volume.array.dtype == np.float32
    assert volume.spacing == (0.5, 0.75, 2.0) and volume.modality is None
    labels = _write_nifti(tmp_path / "label.nii.gz", (data > 0).astype(np.uint8), np.diag([-0.5, 0.75, 2.0, 1.0]))
    label = read_volume(labels, dtype=np.int32)
    assert label.array.dtype == np.int32 and np.array_equal(label.array, (data > 0)[::-1])  # L→R flip


@pytest.mark.parametrize("name", ["image.nrrd", "label.seg.nrrd"])
def test_nrrd_round_trip_converts_lps_to_ras(tmp_path: Path, name: str) -> None:
    data = np.random.default_rng(2).integers(0, 5, size=(4, 5, 6)).astype(np.uint8)
    image = sitk.GetImageFromArray(data.transpose(2, 1, 0).copy())  # identity direction: axes point to L, P, S
    image.SetSpacing((0.5, 0.75, 2.0))
    sitk.WriteImage(image, str(tmp_path / name), useCompression=True)
    volume = read_volume(tmp_path / name, dtype=np.int32)
    assert np.array_equal(volume.array, data[::-1, ::-1, :]) and volume.array.dtype == np.int32
    assert volume.spacing == (0.5, 0.75, 2.0) and volume.modality is None


def test_dicom_round_trip_reads_modality(tmp_path: Path) -> None:
    data = np.random.default_rng(3).integers(-1024, 2000, size=(4, 5, 6)).astype(np.int16)
    image = sitk.GetImageFromArray(data.transpose(2, 1, 0).copy())
    image.SetSpacing((0.5, 0.75, 2.0))
    volume = read_volume(_write_dicom_series(image, tmp_path / "series", modality="MR"))
    assert np.array_equal(volume.array, data[::-1, ::-1, :].astype(np.float32))
    assert volume.spacing == (0.5, 0.75, 2.0) and volume.modality == "MR"


def test_all_formats_agree_on_orientation_and_spacing(tmp_path: Path, permuted_nifti: Path) -> None:
    canonical = nib.as_closest_canonical(nib.load(permuted_nifti))
    assert nib.aff2axcodes(canonical.affine) == ("R", "A", "S")
    image = sitk.ReadImage(str(permuted_nifti))
    sitk.WriteImage(image, str(tmp_path / "permuted.nrrd"))
    dicom = _write_dicom_series(image, tmp_path / "series")
    volumes = [read_volume(path) for path in (permuted_nifti, tmp_path / "permuted.nrrd", dicom)]
    assert volumes[0].array.shape == (7, 5, 6) and volumes[0].spacing == (2.5, 0.75, 1.25)
    assert np.array_equal(volumes[0].array, np.asarray(canonical.dataobj, dtype=np.float32))
    for other in volumes[1:]:
        assert np.array_equal(other.array, volumes[0].array)
        assert other.spacing == volumes[0].spacing
        np.testing.assert_allclose(other.affine, volumes[0].affine, atol=1e-4)


def test_dicom_slices_are_ordered_by_geometry_not_file_name(tmp_path: Path, permuted_nifti: Path) -> None:
    image = sitk.ReadImage(str(permuted_nifti))
    depth = image.GetSize()[2]
    order = np.random.default_rng(4).permutation(depth)
    names = [f"{order[k]:03d}.dcm" for k in range(depth)]
    assert sorted(names) != names and sorted(names) != names[::-1]
    volume = read_volume(_write_dicom_series(image, tmp_path / "shuffled", names=names))
    assert np.array_equal(volume.array, read_volume(permuted_nifti).array)


def test_dicom_volume_carries_no_patient_data(tmp_path: Path, permuted_nifti: Path) -> None:
    volume = read_volume(_write_dicom_series(sitk.ReadImage(str(permuted_nifti)), tmp_path / "series"))
    assert [field.name for field in dataclasses.fields(volume)] == ["array", "spacing", "modality", "affine", "to_ras"]
    assert volume.modality == "CT"
    text = repr(volume) + repr(vars(volume))
    for secret in ("DOE", "JANE", "MRN-0042", "19700101"):
        assert secret not in text


def test_dicom_folder_needs_exactly_one_series(tmp_path: Path, permuted_nifti: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("not DICOM")
    _expect_refusal(tmp_path / "empty", "no DICOM series")
    image = sitk.ReadImage(str(permuted_nifti))
    _write_dicom_series(image, tmp_path / "mixed", names=[f"a{k}.dcm" for k in range(7)])
    _write_dicom_series(image, tmp_path / "mixed", names=[f"b{k}.dcm" for k in range(7)], series_uid=SERIES_UID + "9")
    _expect_refusal(tmp_path / "mixed", "holds 2 DICOM series")


def test_png_and_tiff_read_as_one_grey_slice(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    grey = rng.integers(0, 256, size=(6, 9)).astype(np.uint8)
    Image.fromarray(grey).save(tmp_path / "grey.png")
    Image.fromarray(np.stack([grey] * 3, axis=-1)).save(tmp_path / "grey_rgb.png")
    wide = rng.integers(0, 4096, size=(6, 9)).astype(np.uint16)
    Image.fromarray(wide).save(tmp_path / "wide.png")
    floats = rng.normal(size=(6, 9)).astype(np.float32)
    Image.fromarray(floats).save(tmp_path / "floats.tif")
    for name, expected in [("grey.png", grey), ("grey_rgb.png", grey), ("wide.png", wide), ("floats.tif", floats)]:
        volume = read_volume(tmp_path / name)
        assert volume.array.shape == (6, 9, 1) and volume.spacing == (1.0, 1.0, 1.0), name
        assert np.array_equal(volume.array[:, :, 0], expected.astype(np.float32)), name

    colour = rng.integers(0, 256, size=(6, 9, 3)).astype(np.uint8)
    Image.fromarray(colour).save(tmp_path / "colour.png")
    luma = colour @ np.array([0.299, 0.587, 0.114])
    assert np.allclose(read_volume(tmp_path / "colour.png").array[:, :, 0], luma, atol=1e-4)

    labels = rng.integers(0, 4, size=(6, 9)).astype(np.uint8)
    palette = Image.fromarray(labels, mode="P")
    palette.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255])
    palette.save(tmp_path / "labels.png")
    label = read_volume(tmp_path / "labels.png", dtype=np.int32)
    assert np.array_equal(label.array[:, :, 0], labels)  # palette indices, not colours


def test_missing_unknown_and_truncated_files_are_refused(tmp_path: Path, permuted_nifti: Path) -> None:
    _expect_refusal(tmp_path / "absent.nii.gz", "file not found")
    _expect_refusal(tmp_path / "absent_series", "file not found")
    (tmp_path / "scan.mha").write_bytes(b"\0" * 16)
    _expect_refusal(tmp_path / "scan.mha", "no reader for")

    whole = permuted_nifti.read_bytes()
    (tmp_path / "cut.nii.gz").write_bytes(whole[: len(whole) // 2])
    _expect_refusal(tmp_path / "cut.nii.gz", "not a readable NIfTI")
    sitk.WriteImage(sitk.ReadImage(str(permuted_nifti)), str(tmp_path / "whole.nrrd"))
    (tmp_path / "cut.nrrd").write_bytes((tmp_path / "whole.nrrd").read_bytes()[:-100])
    _expect_refusal(tmp_path / "cut.nrrd", "not a readable NRRD")
    Image.fromarray(np.zeros((64, 64), np.uint8) + 7).save(tmp_path / "whole.png")
    (tmp_path / "cut.png").write_bytes((tmp_path / "whole.png").read_bytes()[:40])
    _expect_refusal(tmp_path / "cut.png", "not a readable 2D image")


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _huge_png(width: int, height: int) -> bytes:
    """A grey PNG whose header states `width` × `height` but whose data holds one short row."""
    header = _png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
    return b"\x89PNG\r\n\x1a\n" + header + _png_chunk(b"IDAT", zlib.compress(b"\0" * 8)) + _png_chunk(b"IEND", b"")


def test_absurd_sizes_are_refused_from_the_header(tmp_path: Path) -> None:
    # A real small file whose header is patched to promise 2000³ voxels; its data is a few bytes, so a reader that
    # decoded before checking would fail as truncated instead.
    small = nib.Nifti1Image(np.zeros((2, 2, 2), np.int16), np.eye(4))
    header = small.header.copy()
    header.set_data_shape((2000, 2000, 2000))
    with gzip.open(tmp_path / "huge.nii.gz", "wb") as handle:
        handle.write(header.binaryblock + b"\0" * 4 + np.zeros(8, np.int16).tobytes())
    _expect_refusal(tmp_path / "huge.nii.gz", "absurd size")

    (tmp_path / "huge.nrrd").write_text(
        "NRRD0004\ntype: short\ndimension: 3\nspace: left-posterior-superior\nsizes: 100000 100000 1000\n"
        "space directions: (1,0,0) (0,1,0) (0,0,1)\nencoding: raw\nendian: little\nspace origin: (0,0,0)\n\n"
    )
    _expect_refusal(tmp_path / "huge.nrrd", "absurd size")

    (tmp_path / "huge.png").write_bytes(_huge_png(100_000, 100_000))
    _expect_refusal(tmp_path / "huge.png", "absurd size")


def test_nan_voxels_are_refused(tmp_path: Path) -> None:
    data = np.ones((3, 4, 5), np.float32)
    data[1, 2, 3] = np.nan
    _expect_refusal(_write_nifti(tmp_path / "nan.nii.gz", data, np.eye(4)), "NaN")
    data[1, 2, 3] = np.inf
    sitk.WriteImage(sitk.GetImageFromArray(data), str(tmp_path / "inf.nrrd"))
    _expect_refusal(tmp_path / "inf.nrrd", "infinite")
    with pytest.raises(RawDataError, match="NaN"):  # integer output must not hide a NaN by casting it
        read_volume(_write_nifti(tmp_path / "nan_label.nii.gz", np.where(data > 1, np.nan, data), np.eye(4)), np.int32)


def test_zero_spacing_is_refused(tmp_path: Path) -> None:
    image = nib.Nifti1Image(np.ones((3, 4, 5), np.float32), np.eye(4))
    image.header["pixdim"][1] = 0.0  # nibabel would quietly load this as 1 mm
    nib.save(image, tmp_path / "flat.nii.gz")
    _expect_refusal(tmp_path / "flat.nii.gz", "spacing")

    sitk.WriteImage(sitk.GetImageFromArray(np.ones((5, 4, 3), np.float32)), str(tmp_path / "good.nrrd"))
    text = (tmp_path / "good.nrrd").read_bytes()
    (tmp_path / "flat.nrrd").write_bytes(text.replace(b"space directions: (1,0,0)", b"space directions: (0,0,0)"))
    _expect_refusal(tmp_path / "flat.nrrd", "spacing")


def test_wrong_dimensionality_is_refused(tmp_path: Path) -> None:
    _expect_refusal(_write_nifti(tmp_path / "series.nii.gz", np.ones((3, 4, 5, 2), np.float32), np.eye(4)), "3D")
    sitk.WriteImage(sitk.GetImageFromArray(np.ones((4, 5), np.float32)), str(tmp_path / "flat.nrrd"))
    _expect_refusal(tmp_path / "flat.nrrd", "3D")
    frames = [Image.fromarray(np.full((4, 5), value, np.uint8)) for value in (1, 2)]
    frames[0].save(tmp_path / "stack.tif", save_all=True, append_images=frames[1:])
    _expect_refusal(tmp_path / "stack.tif", "2 frames")


def test_source_sha256_of_files_and_series_folders(tmp_path: Path, permuted_nifti: Path) -> None:
    assert source_sha256(permuted_nifti) == hashlib.sha256(permuted_nifti.read_bytes()).hexdigest()
    image = sitk.ReadImage(str(permuted_nifti))
    first = source_sha256(_write_dicom_series(image, tmp_path / "a"))
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    assert source_sha256(tmp_path / "b") == first
    slice_file = tmp_path / "b" / "slice003.dcm"
    slice_file.write_bytes(slice_file.read_bytes()[:-1] + b"\x01")
    assert source_sha256(tmp_path / "b") != first
    with pytest.raises(RawDataError, match="file not found"):
        source_sha256(tmp_path / "absent")


def test_manifest_accepts_dicom_folders_and_png_files(tmp_path: Path, permuted_nifti: Path) -> None:
    _write_dicom_series(sitk.ReadImage(str(permuted_nifti)), tmp_path / "case0" / "ct")
    sitk.WriteImage(sitk.ReadImage(str(permuted_nifti)) > 0, str(tmp_path / "case0" / "label.seg.nrrd"))
    Image.fromarray(np.zeros((6, 9), np.uint8)).save(tmp_path / "photo.png")
    Image.fromarray(np.ones((6, 9), np.uint8)).save(tmp_path / "photo_mask.png")
    manifest = {
        "dataset": "mixed",
        "modality": "CT",
        "labels": {0: "background", 1: "body"},
        "cases": [
            {"id": "case0", "image": "case0/ct", "label": "case0/label.seg.nrrd"},
            {"id": "case1", "image": "photo.png", "label": "photo_mask.png"},
        ],
    }
    (tmp_path / "manifest.yaml").write_text(yaml.safe_dump(manifest))
    dataset = load_raw_dataset(tmp_path / "manifest.yaml")
    assert [case.image for case in dataset.cases] == [tmp_path / "case0" / "ct", tmp_path / "photo.png"]
    for case in dataset.cases:
        assert read_volume(case.image).array.shape == read_volume(case.label, dtype=np.int32).array.shape


def test_a_result_on_the_ras_grid_goes_back_to_the_files_voxel_order(permuted_nifti: Path) -> None:
    volume = read_volume(permuted_nifti)
    stored = np.asanyarray(nib.load(str(permuted_nifti)).dataobj)
    np.testing.assert_array_equal(volume.in_stored_order(volume.array), stored)
    assert sorted(volume.stored_axis(axis) for axis in range(3)) == [0, 1, 2]
    assert volume.array.shape[volume.stored_axis(2)] == stored.shape[2]


def _series_image(depth: int = 8, spacing: float = 2.5) -> sitk.Image:
    data = np.random.default_rng(6).integers(-1000, 1000, size=(4, 5, depth)).astype(np.int16)
    image = sitk.GetImageFromArray(data.transpose(2, 1, 0).copy())
    image.SetSpacing((0.5, 0.75, spacing))
    return image


def test_a_dicom_series_with_a_missing_or_duplicated_slice_is_refused(tmp_path: Path) -> None:
    missing = _write_dicom_series(_series_image(), tmp_path / "missing")
    (missing / "slice003.dcm").unlink()  # ITK would spread the 7 slices over 17.5 mm at 2.92 mm each
    error = _expect_refusal(
        missing, r"slice spacing not uniform: gap of 5 mm between positions 5 and 10 mm .* spacing is 2\.5 mm"
    )
    assert "(a missing slice?)" in error.problem
    doubled = _write_dicom_series(_series_image(), tmp_path / "doubled", shifts_mm=[0, 0, 0, 0, -2.5, -2.5, -2.5, -2.5])
    assert "gap of 0 mm" in _expect_refusal(doubled, "slice spacing not uniform").problem

    rounded = [0.0, 0.04, -0.03, 0.0, 0.05, -0.02, 0.0, 0.01]  # positions as some scanners round them
    volume = read_volume(_write_dicom_series(_series_image(), tmp_path / "rounded", shifts_mm=rounded))
    assert volume.array.shape == (4, 5, 8) and volume.spacing[2] == pytest.approx(2.5, abs=0.01)


def test_fractional_label_values_are_refused_not_truncated(tmp_path: Path) -> None:
    labels = np.zeros((4, 5, 6), np.float32)
    labels[1:3, 1:4, 2:5] = 1.0
    labels[0, 0, 0] = 1.5
    path = _write_nifti(tmp_path / "fractional.nii.gz", labels, np.eye(4))
    with pytest.raises(RawDataError, match=r"fractional values \(1\.5\) where whole label values are expected"):
        read_volume(path, dtype=np.int32)
    assert read_volume(path).array[0, 0, 0] == 1.5  # as an image it reads as it is
    labels[0, 0, 0] = 0.9999999  # float storage of a whole number: rounded, not truncated to 0
    label = read_volume(_write_nifti(tmp_path / "whole.nii.gz", labels, np.eye(4)), dtype=np.int32)
    assert label.array[0, 0, 0] == 1 and label.array.dtype == np.int32


def test_a_symbolic_link_loop_is_refused_by_name(tmp_path: Path) -> None:
    (tmp_path / "a.nii.gz").symlink_to(tmp_path / "b.nii.gz")
    (tmp_path / "b.nii.gz").symlink_to(tmp_path / "a.nii.gz")
    _expect_refusal(tmp_path / "a.nii.gz", "symbolic link loop")
    (tmp_path / "dangling.nii.gz").symlink_to(tmp_path / "absent.nii.gz")
    _expect_refusal(tmp_path / "dangling.nii.gz", "file not found")
