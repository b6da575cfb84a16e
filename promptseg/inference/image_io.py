"""Decoding 2D images and masks sent by users (PNG, NPY) with checks that fail with a clear message, and encoding
label maps back (PNG, NPY).

Every problem raises `InvalidInput` naming the file: not an image, wrong dimensions, NaN values, oversized
(a decompression bomb is refused from its PNG or NPY header, before pixels are decoded), a mask that is neither
binary ({0, 1} or {0, 255}) nor a label map holding the wanted label values.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from promptseg.inference.budget import Budget
from promptseg.inference.errors import InvalidInput

MAX_PIXELS = 4096 * 4096
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
NPY_MAGIC = b"\x93NUMPY"


def decode_image(name: str, data: bytes, budget: Budget | None = None) -> np.ndarray:
    """A 2D array from PNG (grey or RGB, converted to grey) or NPY bytes, charged to `budget` from its header."""
    budget = budget or Budget()
    if data.startswith(PNG_MAGIC):
        try:
            with Image.open(io.BytesIO(data)) as image:
                if image.width * image.height > MAX_PIXELS:
                    raise InvalidInput(name, f"image of {image.width}×{image.height} pixels exceeds {MAX_PIXELS}")
                budget.charge(
                    name, (image.height, image.width), max(len(image.getbands()), 2 if ";16" in image.mode else 1)
                )
                if image.mode not in {"L", "I;16", "I"}:
                    image = image.convert("L")
                array = np.asarray(image)
        except InvalidInput:
            raise
        except Exception as error:
            raise InvalidInput(name, f"unreadable PNG ({error})") from error
    elif data.startswith(NPY_MAGIC):
        try:
            array = _load_npy(name, data, budget)
        except InvalidInput:
            raise
        except Exception as error:
            raise InvalidInput(name, f"unreadable NPY ({error})") from error
    else:
        raise InvalidInput(name, "not a PNG or NPY image")
    if array.ndim == 3 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 2:
        raise InvalidInput(name, f"expected a 2D image, got shape {array.shape}")
    if array.size == 0:
        raise InvalidInput(name, f"the image is empty (shape {array.shape})")
    if array.size > MAX_PIXELS:
        raise InvalidInput(name, f"image of {array.size} pixels exceeds {MAX_PIXELS}")
    if array.dtype.kind not in "biuf":
        raise InvalidInput(name, f"unsupported dtype {array.dtype}")
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise InvalidInput(name, "contains NaN or infinite values")
    return array


def _load_npy(name: str, data: bytes, budget: Budget) -> np.ndarray:
    """An NPY array, its declared shape checked and charged before any pixel memory is allocated."""
    stream = io.BytesIO(data)
    read_header = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
    version = np.lib.format.read_magic(stream)
    if version not in read_header:
        raise InvalidInput(name, f"unsupported NPY version {version}")
    shape, _, dtype = read_header[version](stream)
    if int(np.prod(shape)) > MAX_PIXELS:
        raise InvalidInput(name, f"array of shape {shape} exceeds {MAX_PIXELS} pixels")
    budget.charge(name, shape, dtype.itemsize)
    return np.load(io.BytesIO(data), allow_pickle=False)


def binary_mask(name: str, array: np.ndarray) -> np.ndarray:
    """A {0, 1} uint8 mask from {0, 1} or {0, 255} values."""
    values = set(np.unique(array).tolist())
    if values <= {0, 1}:
        return array.astype(np.uint8)
    if values <= {0, 255}:
        return (array > 0).astype(np.uint8)
    raise InvalidInput(name, f"mask is not binary: values {sorted(values)[:6]} (expected {{0,1}} or {{0,255}})")


def encode_png(mask: np.ndarray) -> bytes:
    """A {0, 1} mask as an 8-bit PNG with values {0, 255}."""
    buffer = io.BytesIO()
    Image.fromarray((mask > 0).astype(np.uint8) * 255).save(buffer, format="PNG")
    return buffer.getvalue()


def label_masks(name: str, array: np.ndarray, labels: list[int] | None) -> dict[int, np.ndarray]:
    """Binary {0, 1} masks by label value: with `labels`, one per wanted value of a label map; without, the one
    binary mask ({0, 1} or {0, 255}) as label 1."""
    if labels is None:
        return {1: binary_mask(name, array)}
    if array.dtype.kind == "f" and not np.array_equal(array, np.round(array)):
        raise InvalidInput(name, "a label map must hold whole numbers")
    return {value: (array == value).astype(np.uint8) for value in labels}


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def encode_labels(label_map: np.ndarray, labels: list[int], mask_format: str) -> bytes:
    """A label map as PNG or NPY; a binary result (labels [1]) is written {0, 255} in a PNG so it can be viewed."""
    if mask_format == "npy":
        return npy_bytes(label_map)
    if labels == [1]:
        return encode_png(label_map)
    buffer = io.BytesIO()
    dtype = np.uint8 if max(labels) <= 255 else np.uint16
    Image.fromarray(label_map.astype(dtype)).save(buffer, format="PNG")
    return buffer.getvalue()


def decode_labels(data: bytes, labels: list[int]) -> np.ndarray:
    """The label map of `encode_labels` (values = the label values; 0 is background)."""
    array = decode_image("mask", data)
    return (array > 0).astype(np.uint8) if labels == [1] and data.startswith(PNG_MAGIC) else array
