"""The form fields of contract 4's multipart requests that are not plain scalars, parsed from their comma strings
("1,3", "-160,240", "liver,spleen", "0.8,0.8") into typed values; every bad value raises `InvalidInput` naming its
field. Shared by promptseg.serving.api_models' request models; pydantic and the input error only (no torch).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

from pydantic import BeforeValidator, WithJsonSchema

from promptseg.inference.errors import InvalidInput

MAX_LABEL = 65535
MAX_WINDOW = 1e5  # Hounsfield units run from -1024 to a few thousand; wider is a mistake (or an attack)


def _comma_text(value: object) -> str | None:
    """A form field's comma string; values given as a list (in Python, or a repeated form field) are joined."""
    if isinstance(value, list | tuple):
        value = ",".join(str(v) for v in value)
    text = "" if value is None else str(value).strip()
    return text or None


def _parse_labels(value: object) -> list[int] | None:
    """Label values from "1,3" (or a list of them): distinct whole numbers in 1..65535; None when empty."""
    text = _comma_text(value)
    if text is None:
        return None
    try:
        labels = [int(part) for part in text.split(",")]
    except ValueError:
        raise InvalidInput("labels", f"labels must be comma-separated whole numbers, got {text!r}") from None
    if len(set(labels)) != len(labels) or min(labels) < 1 or max(labels) > MAX_LABEL:
        raise InvalidInput("labels", f"labels must be distinct values in 1..{MAX_LABEL}, got {labels}")
    return labels


def _parse_window(value: object) -> tuple[float, float] | None:
    """A CT window from "low,high" (or a pair): finite, within ±MAX_WINDOW, low below high; None when empty."""
    text = _comma_text(value)
    if text is None:
        return None
    try:
        low, high = (float(part) for part in text.split(","))
    except ValueError:
        raise InvalidInput("window", f"a window is 'low,high', got {text!r}") from None
    if not -MAX_WINDOW <= low < high <= MAX_WINDOW:
        raise InvalidInput(
            "window", f"a window is two finite numbers in -{MAX_WINDOW:g}..{MAX_WINDOW:g}, low below high, got {text!r}"
        )
    return low, high


def _parse_names(value: object) -> list[str] | None:
    """Structure names from "liver,spleen" (or a list): non-empty, distinct; None when empty."""
    text = _comma_text(value)
    if text is None:
        return None
    names = [part.strip() for part in text.split(",")]
    if not all(names) or len(set(names)) != len(names):
        raise InvalidInput("names", f"names must be distinct and non-empty, comma-separated, got {text!r}")
    return names


def _parse_indices(value: object) -> list[int] | None:
    """Slice indices from "12,40" (or a list): whole numbers ≥ 0; None when empty."""
    text = _comma_text(value)
    if text is None:
        return None
    try:
        indices = sorted({int(part) for part in text.split(",")})
    except ValueError:
        raise InvalidInput("annotated", f"annotated slices are comma-separated whole numbers, got {text!r}") from None
    if indices[0] < 0:
        raise InvalidInput("annotated", f"slice indices start at 0, got {indices[0]}")
    return indices


def _spacing_parser(field: str, count: int) -> Callable[[object], tuple[float, ...] | None]:
    def parse(value: object) -> tuple[float, ...] | None:
        """A spacing in mm from "a,b[,c]" (or a tuple): `count` positive numbers; None when empty."""
        text = _comma_text(value)
        if text is None:
            return None
        try:
            spacing = tuple(float(part) for part in text.split(","))
        except ValueError:
            raise InvalidInput(field, f"a spacing is {count} comma-separated numbers in mm, got {text!r}") from None
        if len(spacing) != count or not all(0 < s < 1000 for s in spacing):
            raise InvalidInput(field, f"a spacing is {count} positive numbers in mm, got {text!r}")
        return spacing

    return parse


Labels = Annotated[
    list[int] | None,
    BeforeValidator(_parse_labels),
    WithJsonSchema({"type": "string", "description": "label values, comma-separated", "examples": ["1,3"]}),
]
Window = Annotated[
    tuple[float, float] | None,
    BeforeValidator(_parse_window),
    WithJsonSchema({"type": "string", "description": "a CT window 'low,high'", "examples": ["-160,240"]}),
]


PixelSpacing = Annotated[
    tuple[float, float] | None,
    BeforeValidator(_spacing_parser("pixel_spacing", 2)),
    WithJsonSchema({"type": "string", "description": "row and column spacing 'dy,dx' in mm", "examples": ["0.8,0.8"]}),
]
VoxelSpacing = Annotated[
    tuple[float, float, float] | None,
    BeforeValidator(_spacing_parser("target_spacing", 3)),
    WithJsonSchema({"type": "string", "description": "RAS voxel spacing 'x,y,z' in mm", "examples": ["1,1,2.5"]}),
]


Names = Annotated[
    list[str] | None,
    BeforeValidator(_parse_names),
    WithJsonSchema({"type": "string", "description": "structure names, comma-separated", "examples": ["liver,spleen"]}),
]
Indices = Annotated[
    list[int] | None,
    BeforeValidator(_parse_indices),
    WithJsonSchema({"type": "string", "description": "slice indices, comma-separated", "examples": ["12,40"]}),
]
