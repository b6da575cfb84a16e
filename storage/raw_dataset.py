"""Raw dataset layouts: the Medical Segmentation Decathlon / nnU-Net raw layout and a YAML manifest.

A `RawDataset` lists cases (an image source, a label source) with the dataset's center, modality and label names.
A source is anything `storage.readers` reads: a file (NIfTI, NRRD, PNG/TIFF) or a folder holding a DICOM series.
MSD layout: `dataset.json` (nnU-Net v2 keys `channel_names`/`labels` name→value, or MSD v1 keys
`modality`/`labels` value→name with a `training` list), `imagesTr/<case>_0000.nii.gz`, `labelsTr/<case>.nii.gz`.
An optional `center` key names the acquiring center, and `licence` (or `license`, as MSD writes it) the terms the
data come under. Manifest: a YAML file with `dataset`, `center`,
`modality`, `labels` (a mapping value→name, or a JSON file holding one under `labels`), `cases` (id, image,
label), paths relative to the manifest, each a file or a DICOM folder, and optionally `licence` (the data's terms,
free text, recorded through to the model cards of models trained on them) and `labelled: false` for an image-only
dataset (for self-supervised training), whose cases may come without `label`.

Case paths are absolute (the description's folder made absolute, symbolic links kept), so what is recorded from
them reads the same from any working directory. A description that cannot be read at all is a `RawDataError`; a
case entry that is unusable (not a mapping; `id`, `image` or, in a labelled dataset, `label` missing or not text)
and every case sharing its id with another (which would merge in the store) is left out of `cases` and reported
in `problems`, naming the description (or the case's image) relative to the dataset root, so the other cases land.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path

import yaml

from storage.errors import Problem, RawDataError, unreachable


@dataclass(frozen=True)
class RawCase:
    case_id: str
    image: Path
    label: Path | None  # None only in an image-only dataset


@dataclass(frozen=True)
class RawDataset:
    name: str
    center: str
    modality: str
    labels: dict[int, str]
    cases: list[RawCase] = field(default_factory=list)
    labelled: bool = True
    problems: list[Problem] = field(default_factory=list)  # the case entries left out, and why
    licence: str = ""  # the terms the data come under, as the description states them ("" when it states none)


def load_raw_dataset(path: Path) -> RawDataset:
    """Read an MSD folder (holding dataset.json) or a manifest YAML file."""
    path = Path(path).absolute()
    expected = "an MSD folder with dataset.json or a manifest .yaml file"
    if not path.exists():
        reason = unreachable(path).problem.replace("file not found", "no such file or folder")
        raise RawDataError(path, f"{reason} (expected {expected})")
    if path.is_dir():
        return _unique_ids(_load_msd(path), path)
    if path.suffix in {".yaml", ".yml"}:
        return _unique_ids(_load_manifest(path), path.parent)
    raise RawDataError(path, f"expected {expected}")


def relative(path: Path, root: Path) -> str:
    """A path as reported: relative to the dataset root where it lies below it, else its name. Judged on the
    absolute paths as written, never following symbolic links (a link loop is reported, not followed)."""
    absolute, folder = os.path.abspath(path), os.path.abspath(root)
    if os.path.commonpath([absolute, folder]) == folder:
        return os.path.relpath(absolute, folder)
    return Path(path).name


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


def _case_entries(path: Path, entries: object, keys: tuple[str, ...], optional: tuple[str, ...] = ()) -> list:
    """A description's list of case entries, each (its number, the entry, its problem or None): an entry needs
    each of `keys` as text, and each of `optional` it has as text."""
    if not isinstance(entries, list):
        raise RawDataError(path, "the cases must be a list")
    checked = []
    for number, entry in enumerate(entries, 1):
        if not isinstance(entry, dict):
            checked.append((number, entry, f"case {number} is not a mapping of {', '.join(map(repr, keys))}"))
            continue
        missing = [key for key in keys if entry.get(key) in (None, "")]
        wrong = [key for key in (*keys, *optional) if key not in missing and not _is_text(entry.get(key), key)]
        problem = None
        if missing:
            problem = f"case {number} has no {', '.join(repr(key) for key in missing)}"
        elif wrong:
            problem = f"case {number}: {', '.join(repr(key) for key in wrong)} must be a path (text)"
        checked.append((number, entry, problem))
    return checked


def _is_text(value: object, key: str) -> bool:
    """Whether an entry's value can stand for `key`: ids may be numbers (YAML reads 7 as one), paths are text."""
    if value is None:
        return True
    return isinstance(value, str) or (key == "id" and isinstance(value, int) and not isinstance(value, bool))


def _entry_id(entry: object, number: int) -> str:
    """An entry's case id, or 'entry <number>' for one without."""
    if isinstance(entry, dict) and entry.get("id") not in (None, ""):
        return str(entry["id"])
    return f"entry {number}"


def _foreground_labels(mapping: dict[int, str]) -> dict[int, str]:
    return {value: name for value, name in sorted(mapping.items()) if value != 0}


def _load_msd(root: Path) -> RawDataset:
    meta_path = root / "dataset.json"
    meta = _read_json(meta_path)
    problems: list[Problem] = []
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
        cases = []
        for number, item, problem in _case_entries(meta_path, meta.get("training"), ("image", "label")):
            if problem:
                problems.append(Problem(f"entry {number}", meta_path.name, problem))
            else:
                case_id = Path(item["image"]).name.split(".")[0]
                cases.append(RawCase(case_id, root / item["image"], root / item["label"]))
    else:
        raise RawDataError(meta_path, "needs 'channel_names' (nnU-Net v2) or 'modality' (MSD v1)")
    if not cases and not problems:
        raise RawDataError(root, "no training cases found")
    name = str(meta.get("name", root.name))
    return RawDataset(
        name,
        str(meta.get("center", name)),
        modality,
        _foreground_labels(labels),
        cases,
        problems=problems,
        licence=_licence(meta),
    )


def _licence(meta: dict) -> str:
    """The description's `licence` (or `license`) as text, "" when it states none."""
    stated = meta.get("licence", meta.get("license"))
    return "" if stated is None else str(stated).strip()


def _load_manifest(path: Path) -> RawDataset:
    try:
        meta = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError as error:
        raise RawDataError(path, "file not found") from error
    except yaml.YAMLError as error:
        raise RawDataError(path, f"invalid YAML ({error})") from error
    if not isinstance(meta, dict):
        raise RawDataError(path, "expected a mapping with 'dataset', 'modality', 'labels' and 'cases'")
    missing = {"dataset", "modality", "labels", "cases"} - set(meta)
    if missing:
        raise RawDataError(path, f"missing keys: {sorted(missing)}")
    labelled = meta.get("labelled", True)
    if not isinstance(labelled, bool):
        raise RawDataError(path, f"'labelled' must be true or false, not {labelled!r}")
    labels = meta["labels"]
    if isinstance(labels, str):
        labels = _read_json(path.parent / labels)["labels"]
    keys, optional = (("id", "image", "label"), ()) if labelled else (("id", "image"), ("label",))
    cases, problems = [], []
    for number, item, problem in _case_entries(path, meta["cases"], keys, optional):
        if problem:
            problems.append(Problem(_entry_id(item, number), path.name, problem))
            continue
        label = path.parent / item["label"] if item.get("label") not in (None, "") else None
        cases.append(RawCase(str(item["id"]), path.parent / item["image"], label))
    return RawDataset(
        name=str(meta["dataset"]),
        center=str(meta.get("center", meta["dataset"])),
        modality=str(meta["modality"]),
        labels=_foreground_labels(_label_values(path, labels)),
        cases=cases,
        labelled=labelled,
        problems=problems,
        licence=_licence(meta),
    )


def _unique_ids(dataset: RawDataset, root: Path) -> RawDataset:
    """The dataset without the cases whose id another case shares (which one is meant cannot be told, and both
    would land under one pseudonym), each reported with its image."""
    counts = Counter(case.case_id for case in dataset.cases)
    shared = {case_id for case_id, count in counts.items() if count > 1}
    if not shared:
        return dataset
    problems = [
        Problem(
            case.case_id,
            relative(case.image, root),
            f"{counts[case.case_id]} cases of this dataset have this case id; ids must be unique, so none of them "
            "is ingested",
        )
        for case in dataset.cases
        if case.case_id in shared
    ]
    cases = [case for case in dataset.cases if case.case_id not in shared]
    return replace(dataset, cases=cases, problems=[*dataset.problems, *problems])
