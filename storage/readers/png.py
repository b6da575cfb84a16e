"""2D images and label images (.png, .tif, .tiff) through Pillow, as a volume of shape (H, W, 1), spacing 1 mm.

Pillow's (row, column) array is kept as is: these formats carry no patient geometry to reorient by. Colour is
reduced to grey; palette images keep their indices, which is how label maps are stored as palette PNGs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from storage.errors import RawDataError
from storage.readers.base import Volume, VolumeReader, check_size, checked_volume

# ITU-R 601-2 luma, the weights Pillow's own RGB→L conversion uses.
LUMA = np.array([0.299, 0.587, 0.114])
_BYTES_PER_PIXEL = {"I": 4, "F": 4, "I;16": 2, "I;16B": 2, "I;16L": 2, "I;16N": 2}


class PngReader(VolumeReader):
    name = "2D image (.png, .tif, .tiff)"

    def matches(self, path: Path) -> bool:
        return Path(path).suffix.lower() in {".png", ".tif", ".tiff"}

    def read(self, path: Path, dtype: type = np.float32) -> Volume:
        try:
            with Image.open(path) as image:
                return _read(Path(path), image, dtype)
        except RawDataError:
            raise
        except FileNotFoundError as error:
            raise RawDataError(path, "file not found") from error
        except Image.DecompressionBombError as error:
            raise RawDataError(path, f"header promises an absurd size ({error})") from error
        except Exception as error:  # Pillow raises many types for truncated or foreign files
            raise RawDataError(path, f"not a readable 2D image ({error})") from error


def _read(path: Path, image: Image.Image, dtype: type) -> Volume:
    width, height = image.size  # from the header: Pillow decodes pixels only on first access
    stored = _BYTES_PER_PIXEL.get(image.mode, len(image.getbands()))  # the other modes take one byte per band
    check_size(path, (height, width), max(stored, np.dtype(dtype).itemsize))
    frames = getattr(image, "n_frames", 1)
    if frames != 1:
        raise RawDataError(path, f"expected a single 2D image, got {frames} frames")
    return checked_volume(path, _grey(image)[:, :, np.newaxis], (1.0, 1.0, 1.0), dtype)


def _grey(image: Image.Image) -> np.ndarray:
    """One value per pixel: grey, palette index or integer/float values as stored; colour reduced to luma."""
    if image.mode in {"1", "L", "P", "I", "F"} or image.mode.startswith("I;16"):
        return np.asarray(image)
    if image.mode == "LA":
        return np.asarray(image)[:, :, 0]
    rgb = np.asarray(image.convert("RGB") if image.mode not in {"RGB", "RGBA"} else image)[:, :, :3]
    # Grey images saved as RGB keep their exact values; only true colour goes through the luma weights.
    if (rgb == rgb[:, :, :1]).all():
        return rgb[:, :, 0]
    return rgb @ LUMA
