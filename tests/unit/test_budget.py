"""A request's decoding budget: charged from headers before pixels are decoded, so a decompression bomb or a file
that declares more than it holds is refused without the memory it asks for."""

from __future__ import annotations

import gzip
import io
import tracemalloc

import nibabel as nib
import numpy as np
import pytest

from promptseg.inference.budget import Budget, Limits, OverBudget
from promptseg.inference.errors import InvalidInput
from promptseg.inference.image_io import decode_image
from promptseg.inference.volume_io import read_volume

SMALL = Limits(max_files=4, max_decoded_bytes=8 << 20, max_pixels=1 << 20, max_slices=2048, max_labels=3)


def _header(shape: tuple[int, ...], dtype: type) -> bytes:
    header = nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(dtype)
    header.set_data_offset(352)
    return header.binaryblock + bytes(4)


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def test_a_nifti_bomb_is_refused_from_its_header_before_it_inflates() -> None:
    declared = (1024, 1024, 64)  # 256 MB of float32 zeros, over the small budget; 65 kB gzipped
    bomb = gzip.compress(_header(declared, np.float32) + bytes(64 << 20), 6)
    tracemalloc.start()
    try:
        with pytest.raises(OverBudget, match="over its limit"):
            read_volume("bomb.nii.gz", bomb, Budget(SMALL))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20  # the header was inflated, not the voxels


def test_a_file_holding_less_than_its_header_declares_is_refused_before_allocation() -> None:
    with pytest.raises(InvalidInput, match="header declares 524288"):
        read_volume("header-only.nii", _header((64, 64, 64), np.int16), Budget())
    with pytest.raises(InvalidInput, match="NIfTI header"):
        read_volume("zeros.nii.gz", gzip.compress(bytes(4096)), Budget())


def test_a_volume_within_the_budget_is_read_and_charged() -> None:
    image = nib.Nifti1Image(np.arange(16 * 16 * 8, dtype=np.int16).reshape(16, 16, 8), np.eye(4))
    budget = Budget(SMALL)
    volume = read_volume("v.nii.gz", gzip.compress(image.to_bytes()), budget)
    assert volume.array.shape == (16, 16, 8) and budget.pixels == 16 * 16 * 8
    assert budget.decoded_bytes == 16 * 16 * 8 * (2 + 4)  # int16 pixels and their float32 copy
    long_axis = nib.Nifti1Image(np.zeros((1, 1, 2049), np.int16), np.eye(4))
    with pytest.raises(OverBudget, match="slices"):
        read_volume("long.nii", long_axis.to_bytes(), Budget(SMALL))


def test_images_count_against_one_budget_per_request() -> None:
    budget = Budget(SMALL)
    decode_image("a.npy", _npy(np.zeros((640, 640), np.uint8)), budget)
    decode_image("b.npy", _npy(np.zeros((640, 640), np.uint8)), budget)
    with pytest.raises(OverBudget, match="pixels"):  # 3 × 640² > 1 Mpixel, the header alone tells
        decode_image("c.npy", _npy(np.zeros((640, 640), np.uint8)), budget)
    with pytest.raises(InvalidInput, match="empty"):
        decode_image("z.npy", _npy(np.zeros((0, 64))), Budget())
    with pytest.raises(OverBudget, match="4 files"):
        Budget(SMALL).count_files("files", 5)
    with pytest.raises(OverBudget, match="3 label values"):
        Budget(SMALL).count_labels("labels", 4)


def test_a_truncated_gzip_stream_is_named_as_such() -> None:
    packed = gzip.compress(nib.Nifti1Image(np.zeros((32, 32, 8), np.float32), np.eye(4)).to_bytes())
    with pytest.raises(InvalidInput, match="truncated gzip stream"):
        read_volume("v.nii.gz", packed[: len(packed) // 2], Budget())


def test_a_nifti_with_extensions_is_read() -> None:
    image = nib.Nifti1Image(np.ones((8, 8, 4), np.uint8), np.eye(4))
    image.header.extensions.append(nib.nifti1.Nifti1Extension("comment", b"annotated by hand"))
    volume = read_volume("label.nii.gz", gzip.compress(image.to_bytes()), Budget())
    assert volume.array.shape == (8, 8, 4) and volume.array.min() == 1
