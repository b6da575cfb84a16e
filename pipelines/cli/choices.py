"""The closed choices of the command line, as enums so `--help` lists them and typer refuses others at once."""

from __future__ import annotations

from enum import StrEnum


class Size(StrEnum):
    """The network to train: a PromptSeg size (promptseg.nets.factory.MODEL_SIZES) or the UniverSeg baseline."""

    tiny = "tiny"
    small = "small"
    base = "base"
    universeg = "universeg"


class Profile(StrEnum):
    """An evaluation profile (promptseg.evaluation.report.eval_spec)."""

    quick = "quick"
    full = "full"


class MaskFormat(StrEnum):
    """The file format of 2D label maps the endpoint returns."""

    png = "png"
    npy = "npy"


class VolumeFormat(StrEnum):
    """The file format of a label volume the endpoint returns."""

    nifti = "nifti"
    dicom_seg = "dicom-seg"
    npy = "npy"
