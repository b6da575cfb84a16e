"""Raw dataset layouts: the Medical Segmentation Decathlon / nnU-Net raw layout and a YAML manifest.

A `RawDataset` lists cases (an image source, a label source) with the dataset's center, modality and label names.
A source is anything `storage.readers` reads: a file (NIfTI, NRRD, PNG/TIFF) or a folder holding a DICOM series.
MSD layout: `dataset.json` (nnU-Net v2 keys `channel_names`/`labels` name→value, or MSD v1 keys
`modality`/`labels` value→name with a `training` list), `imagesTr/<case>_0000.nii.gz`, `labelsTr/<case>.nii.gz`.
An optional `center` key names the acquiring center. Manifest: a YAML file with `dataset`, `center`,
`modality`, `labels` (a mapping value→name, or a JSON file holding one under `labels`) and `cases` (id, image,
label), paths relative to the manifest, each a file or a DICOM folder.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from storage.errors import RawDataError


@dataclass(frozen=True)
class RawCase:
    case_id: str
    image: Path
    label: Path


@dataclass(frozen=True)
class RawDataset:
    name: str
    center: str
    modality: str
    labels: dict[int, str]
    cases: list[RawCase] = field(default_factory=list)


def load_raw_dataset(path: Path) -> RawDataset:
    """Read an MSD folder (holding dataset.json) or a manifest YAML file."""
    path = Path(path)
    expected = "an MSD folder with dataset.json or a manifest .yaml file"
    if not path.exists():
        raise RawDataError(path, f"no such file or folder (expected {expected})")
    if path.is_dir():
        return _load_msd(path)
    if path.suffix in {".yaml", ".yml"}:
        return _load_manifest(path)
    raise RawDataError(path, f"expected {expected}")


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as error:
        raise RawDataError(path, "file not found") from error
    except json.JSONDecodeError as error:
        raise RawDataError(path, f"invalid JSON ({error})") from error


def _label_values(path: Path, mapping: object) -> dict[int, str]:
    """A description's labels as value → name; a value that is not a whole number is the description's error."""
    if not isinstance(mapping, dict):
        raise RawDataError(path, "the labels must be a mapping of values to names")
    try:
        return {int(value): str(name) for value, name in mapping.items()}
    except (TypeError, ValueError) as error:
        raise RawDataError(path, f"label values must be whole numbers ({error})") from error


def _case_entries(path: Path, entries: object, keys: tuple[str, ...]) -> list[dict]:
    """A description's list of cases, each holding `keys`; the first entry without one is the description's error."""
    if not isinstance(entries, list):
        raise RawDataError(path, "the cases must be a list")
    for number, entry in enumerate(entries, 1):
        missing = [key for key in keys if not isinstance(entry, dict) or key not in entry]
        if missing:
            raise RawDataError(path, f"case {number} has no {', '.join(repr(key) for key in missing)}")
    return entries


def _foreground_labels(mapping: dict[int, str]) -> dict[int, str]:
    return {value: name for value, name in sorted(mapping.items()) if value != 0}


def _load_msd(root: Path) -> RawDataset:
    meta_path = root / "dataset.json"
    meta = _read_json(meta_path)
    if "channel_names" in meta:  # nnU-Net v2
        modality = str(meta["channel_names"]["0"])
        regions = {name: value for name, value in meta["labels"].items() if isinstance(value, list)}
        if regions:
            raise RawDataError(meta_path, f"nnU-Net region labels are not supported (one value per label): {regions}")
        labels = _label_values(meta_path, {value: name for name, value in meta["labels"].items()})
        ending = meta.get("file_ending", ".nii.gz")
        images = sorted((root / "imagesTr").glob(f"*_0000{ending}"))
        cases = [
            RawCase(p.name[: -len(f"_0000{ending}")], p, root / "labelsTr" / p.name.replace("_0000", ""))
            for p in images
        ]
    elif "modality" in meta:  # MSD v1
        modality = str(meta["modality"]["0"])
        labels = _label_values(meta_path, meta["labels"])
        cases = [
            RawCase(Path(item["image"]).name.split(".")[0], root / item["image"], root / item["label"])
            for item in _case_entries(meta_path, meta["training"], ("image", "label"))
        ]
    else:
        raise RawDataError(meta_path, "needs 'channel_names' (nnU-Net v2) or 'modality' (MSD v1)")
    if not cases:
        raise RawDataError(root, "no training cases found")
    name = str(meta.get("name", root.name))
    return RawDataset(name, str(meta.get("center", name)), modality, _foreground_labels(labels), cases)


def _load_manifest(path: Path) -> RawDataset:
    try:
        meta = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError as error:
        raise RawDataError(path, "file not found") from error
    except yaml.YAMLError as error:
        raise RawDataError(path, f"invalid YAML ({error})") from error
    missing = {"dataset", "modality", "labels", "cases"} - set(meta or {})
    if missing:
        raise RawDataError(path, f"missing keys: {sorted(missing)}")
    labels = meta["labels"]
    if isinstance(labels, str):
        labels = _read_json(path.parent / labels)["labels"]
    cases = [
        RawCase(str(item["id"]), path.parent / item["image"], path.parent / item["label"])
        for item in _case_entries(path, meta["cases"], ("id", "image", "label"))
    ]
    return RawDataset(
        name=str(meta["dataset"]),
        center=str(meta.get("center", meta["dataset"])),
        modality=str(meta["modality"]),
        labels=_foreground_labels(_label_values(path, labels)),
        cases=cases,
    )
