"""The Zarr v3 task store: contract 1 of the platform, kept in this one module.

Layout (schema version 1)::

    <store>/                                root group; attrs: schema_version, resolution, preparation
      datasets/<dataset>/                   group; attrs: current_version  ← the pointer, written last
        cases/<case_key>/axis<k>/           group; attrs: summary (written last: the case is complete)
          image                             float16 (slices, R, R) in [0, 1]; chunk = one slice
          label                             uint8   (slices, R, R) label map; chunk = one slice
        versions/<version_id>/              group; attrs: complete, dataset, center, modality, labels,
                                            fingerprint, normalization, source_hashes, cases, index

- Every case is harmonized (storage.harmonize) and cut into 2D slices along axis k at the store's
  `resolution` (one value per store; models record it and training refuses a mismatch).
- A harmonized case is content-addressed: `case_key` hashes its source files' hashes and every recipe
  parameter. Case arrays are immutable and shared by every version that lists the case, so a new version
  only preprocesses the cases that changed.
- Shards: each (case, axis) array is one shard, written whole by the single task that preprocesses that case,
  so every shard has exactly one writer (zarr-python loses data when two writers touch one shard). One
  preprocess run per dataset at a time.
- A slice id `<dataset>/<case>/axis<k>/<index>` names a slice stably (index = position along the axis in the
  RAS-oriented source volume). A task is dataset × label × axis, id `<dataset>/<label name>/axis<k>`; the index
  maps each task to its slices and their foreground sizes (pixels at the store's resolution).
- Versions are immutable manifests (case keys, task index, attributes): a new version is written aside under
  its content-derived id, marked complete, and becomes current only when the dataset's pointer is written
  last. Readers only follow pointers, so a half-written version is never visible (no atomic rename needed,
  which object stores lack).
- `preparation` holds the store's one CT window (storage.ct_window) and the preparation recipe version
  (storage.preparation) the last preprocess run wrote under; training copies both into the model card.
- The snapshot id hashes the metadata of every dataset's current version; training records it.
- Retention: each dataset keeps the versions it replaced (`history`); `prune` deletes the older ones and the case
  arrays only they listed.
- Attributes hold no patient identifiers: sources are named by content hash, cases by their keyed pseudonym
  (storage.privacy).
- The slices are patient pixels: a store on a local path is created owner-only (its folder 0700).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import tensorstore as ts
import zarr
from zarr.codecs import BloscCodec

from storage.errors import StoreSchemaError

SCHEMA_VERSION = 1
_COMPRESSORS = (BloscCodec(cname="zstd", clevel=3, shuffle="bitshuffle"),)


@dataclass(frozen=True)
class SliceRef:
    """One slice of a task: where it lives in its case array and how many foreground pixels it has."""

    case: str
    position: int
    index: int
    foreground: int


@dataclass(frozen=True)
class Task:
    """dataset × label × axis, with the slices that contain the label."""

    dataset: str
    label_value: int
    label_name: str
    axis: int
    slices: tuple[SliceRef, ...]
    center: str = ""

    @property
    def task_id(self) -> str:
        return f"{self.dataset}/{self.label_name}/axis{self.axis}"

    @property
    def cases(self) -> list[str]:
        return sorted({ref.case for ref in self.slices})


def slice_id(dataset: str, case: str, axis: int, index: int) -> str:
    return f"{dataset}/{case}/axis{axis}/{index}"


def content_id(payload: dict) -> str:
    """A short stable hash of JSON-able metadata (version ids, snapshot ids)."""
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


# Case arrays are immutable (content-addressed), so cached shard indices and chunks never need rechecking.
_READ_CONTEXT = {"cache_pool": {"total_bytes_limit": 128 * 2**20}}


def _local_path(url: str) -> Path | None:
    """The folder of a store on a local path (a path or a file:// URL), or None for a remote one."""
    parsed = urlparse(url)
    return Path(parsed.path or url) if parsed.scheme in ("", "file") else None


def _tensorstore_kvstore(url: str, path: str) -> dict | None:
    """The tensorstore kvstore spec of `path` inside the store at `url`, or None where tensorstore can't reach it."""
    parsed = urlparse(url)
    if (local := _local_path(url)) is not None:
        return {"driver": "file", "path": f"{local.resolve()}/{path}"}
    if parsed.scheme == "s3":
        spec = {"driver": "s3", "bucket": parsed.netloc, "path": f"{parsed.path.strip('/')}/{path}".lstrip("/")}
        if endpoint := os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL"):
            # an S3-compatible server (MinIO, moto, ...), as fsspec/botocore read it from the same variables
            spec |= {"endpoint": endpoint, "aws_region": os.environ.get("AWS_DEFAULT_REGION", "us-east-1")}
        return spec
    return None


class TaskStore:
    """Read and write access to one task store (a local path or any URL zarr can open)."""

    def __init__(self, root: zarr.Group, url: str) -> None:
        self._root = root
        self.url = url
        self._arrays: dict[str, ts.TensorStore | zarr.Array] = {}
        self._summaries: dict[tuple[str, str, int], dict] = {}

    def __reduce__(self) -> tuple:
        """Pickled as its URL: a copy (in a DataLoader or Ray worker) reopens the store and its own read handles."""
        return (TaskStore.open, (self.url,))

    @classmethod
    def open(cls, url: str, resolution: int | None = None, *, create: bool = False) -> TaskStore:
        """Open a store; with create=True make it (at `resolution`) if absent. Refuses other schemas/resolutions."""
        local = _local_path(url)
        if create and local is not None and not local.exists():
            local.mkdir(mode=0o700, parents=True, exist_ok=True)
        try:
            root = zarr.open_group(url, mode="r+" if not create else "a")
        except FileNotFoundError as error:
            raise StoreSchemaError(f"no task store at {url}: run `promptseg preprocess` first") from error
        if "schema_version" not in root.attrs:
            if not create or resolution is None:
                raise StoreSchemaError(f"{url} is not a PromptSeg task store (no schema_version)")
            root.attrs.update({"schema_version": SCHEMA_VERSION, "resolution": resolution})
            root.require_group("datasets")
        store = cls(root, url)
        if store.schema_version != SCHEMA_VERSION:
            raise StoreSchemaError(
                f"{url} has task-store schema version {store.schema_version}; this code reads version "
                f"{SCHEMA_VERSION}: preprocess into a new store"
            )
        if resolution is not None and store.resolution != resolution:
            raise StoreSchemaError(f"{url} has resolution {store.resolution}, expected {resolution}")
        return store

    @property
    def schema_version(self) -> int:
        return int(self._root.attrs["schema_version"])

    @property
    def resolution(self) -> int:
        return int(self._root.attrs["resolution"])

    def preparation(self) -> dict:
        """The store's CT window (`ct_window`: [low, high] or None) and `recipe_version`; {} if never recorded."""
        return dict(self._root.attrs.get("preparation", {}))

    def record_preparation(self, recipe_version: str, ct_window: tuple[float, float] | None) -> None:
        """Record the recipe and window (written only when they changed: an unchanged run writes nothing)."""
        preparation = {"recipe_version": recipe_version, "ct_window": list(ct_window) if ct_window else None}
        if self.preparation() != preparation:
            self._root.attrs.update({"preparation": preparation})

    def datasets(self) -> list[str]:
        group = self._root["datasets"]
        return sorted(name for name, _ in group.groups() if "current_version" in group[name].attrs)

    def current_version(self, dataset: str) -> str:
        return str(self._root[f"datasets/{dataset}"].attrs["current_version"])

    def version_info(self, dataset: str, version: str | None = None) -> dict:
        """The attributes of a dataset version (the current one by default)."""
        version = version or self.current_version(dataset)
        return dict(self._root[f"datasets/{dataset}/versions/{version}"].attrs)

    def has_complete_version(self, dataset: str, version: str) -> bool:
        path = f"datasets/{dataset}/versions/{version}"
        return path in self._root and bool(self._root[path].attrs.get("complete"))

    def snapshot_id(self) -> str:
        return content_id({name: self.version_info(name) for name in self.datasets()})

    def grid_spacing_mm(self, dataset: str) -> dict[tuple[str, int], float]:
        """(case, axis) → the mm size of one model-grid pixel of that case's slices, where the version records it."""
        cases = self.version_info(dataset)["cases"]
        return {
            (case, int(axis)): float(size)
            for case, entry in cases.items()
            for axis, size in entry.get("grid_spacing_mm", {}).items()
            if size is not None
        }

    def tasks(self) -> list[Task]:
        """Every task of every current dataset version."""
        found = []
        for dataset in self.datasets():
            info = self.version_info(dataset)
            for value, per_axis in info["index"].items():
                for axis, rows in per_axis.items():
                    refs = tuple(SliceRef(case, pos, idx, fg) for case, pos, idx, fg in rows)
                    found.append(
                        Task(dataset, int(value), info["labels"][value], int(axis), refs, info.get("center", dataset))
                    )
        return found

    def _array(self, dataset: str, case: str, axis: int, kind: str) -> ts.TensorStore | zarr.Array:
        """A case array for reading: through tensorstore where it reaches the store (local paths, s3), which reads
        the same zarr v3 arrays 7-17× faster than zarr-python; through zarr-python otherwise."""
        cache_key = f"{dataset}/{case}/{axis}/{kind}"
        if cache_key not in self._arrays:
            key = self.version_info(dataset)["cases"][case]["key"]
            path = f"datasets/{dataset}/cases/{key}/axis{axis}/{kind}"
            kvstore = _tensorstore_kvstore(self.url, path)
            spec = {
                "driver": "zarr3",
                "kvstore": kvstore,
                "context": _READ_CONTEXT,
                "recheck_cached_data": False,
                "recheck_cached_metadata": False,
            }
            self._arrays[cache_key] = ts.open(spec, read=True).result() if kvstore else self._root[path]
        return self._arrays[cache_key]

    def read_slices(self, task: Task, refs: list[SliceRef]) -> tuple[np.ndarray, np.ndarray]:
        """Images (K, R, R) float16 in [0, 1] as stored and binary masks (K, R, R) uint8 of `task` at `refs`.

        Converting to float32 is left to the consumer: torch does it several times faster than numpy.

        Only the chunks of the requested slices are read, all of them issued at once."""
        pending = [
            self._array(task.dataset, r.case, task.axis, kind)[r.position] for kind in ("image", "label") for r in refs
        ]
        arrays = [item.read() if isinstance(item, ts.TensorStore) else item for item in pending]
        arrays = [item.result() if isinstance(item, ts.Future) else item for item in arrays]
        images, labels = np.stack(arrays[: len(refs)]), np.stack(arrays[len(refs) :])
        return images, (labels == task.label_value).view(np.uint8)

    def read_case(self, dataset: str, case: str, axis: int) -> tuple[list[int], np.ndarray]:
        """Every stored slice of one case along `axis`: their indices in the source volume and the images (S, R, R)
        float16 in [0, 1], in the order stored (ascending index)."""
        indices = [int(i) for i in self.version_info(dataset)["cases"][case]["axes"][str(axis)]]
        array = self._array(dataset, case, axis, "image")
        images = array.read().result() if isinstance(array, ts.TensorStore) else array[...]
        return indices, np.asarray(images)

    def absent_slices(self, task: Task, case: str) -> list[SliceRef]:
        """The slices of `case` the store keeps along the task's axis that do not show the task's structure
        (negative queries: a model must predict nothing there)."""
        cache_key = (task.dataset, case, task.axis)  # a case's arrays and summary never change, like `_arrays`
        if cache_key not in self._summaries:
            key = self.version_info(task.dataset)["cases"][case]["key"]
            self._summaries[cache_key] = self.case_summary(task.dataset, key, task.axis) or {
                "indices": [],
                "foreground": {},
            }
        summary = self._summaries[cache_key]
        counts = summary["foreground"].get(str(task.label_value)) or [0] * len(summary["indices"])
        rows = enumerate(zip(summary["indices"], counts, strict=True))
        return [SliceRef(case, position, index, 0) for position, (index, count) in rows if not count]

    def case_summary(self, dataset: str, case_key: str, axis: int) -> dict | None:
        """The summary of a completely written case, or None."""
        path = f"datasets/{dataset}/cases/{case_key}/axis{axis}"
        if path in self._root and "summary" in self._root[path].attrs:
            return dict(self._root[path].attrs["summary"])
        return None

    def write_case(
        self,
        dataset: str,
        case_key: str,
        axis: int,
        images: np.ndarray,
        labels: np.ndarray,
        indices: list[int],
        grid_spacing_mm: float | None = None,
    ) -> dict:
        """Write one harmonized case, each array one whole shard; return its summary (`grid_spacing_mm`: the
        physical size of one model-grid pixel of these slices, for distances in mm)."""
        group = self._root.require_group(f"datasets/{dataset}/cases/{case_key}/axis{axis}")
        n, r = len(indices), self.resolution
        for kind, data, dtype in (("image", images, "float16"), ("label", labels, "uint8")):
            array = group.create_array(
                kind,
                shape=(n, r, r),
                chunks=(1, r, r),
                shards=(n, r, r),
                dtype=dtype,
                compressors=_COMPRESSORS,
                overwrite=True,
            )
            array[...] = data.astype(dtype)
        foreground = {
            str(value): (labels == value).sum(axis=(1, 2)).tolist() for value in np.unique(labels) if value != 0
        }
        summary = {
            "key": case_key,
            "axis": axis,
            "indices": [int(i) for i in indices],
            "foreground": foreground,
            "grid_spacing_mm": grid_spacing_mm,
        }
        group.attrs.update({"summary": summary})  # written last: marks the case complete
        return summary

    def commit_version(self, dataset: str, version: str, meta: dict, case_summaries: list[dict]) -> None:
        """Write a version's attributes and task index, mark it complete, then point the dataset at it.

        Each summary is one from `write_case` plus the `case` id under which this version lists it."""
        index: dict[str, dict[str, list]] = {}
        cases: dict[str, dict] = {}
        for summary in sorted(case_summaries, key=lambda s: (s["case"], s["axis"])):
            axis = str(summary["axis"])
            case = cases.setdefault(summary["case"], {"key": summary["key"], "axes": {}, "grid_spacing_mm": {}})
            case["axes"][axis] = summary["indices"]
            case["grid_spacing_mm"][axis] = summary.get("grid_spacing_mm")
            for value, sizes in summary["foreground"].items():
                index.setdefault(value, {}).setdefault(axis, []).extend(
                    [summary["case"], pos, idx, fg]
                    for pos, (idx, fg) in enumerate(zip(summary["indices"], sizes, strict=True))
                    if fg > 0
                )
        group = self._root.require_group(f"datasets/{dataset}/versions/{version}")
        group.attrs.update({**meta, "dataset": dataset, "cases": cases, "index": index, "complete": True})
        self.point_current(dataset, version)

    def point_current(self, dataset: str, version: str) -> None:
        """Make `version` the dataset's current version: the one small write readers follow. The version it
        replaces goes to the end of the dataset's `history` (oldest first), which `prune` keeps from."""
        group = self._root[f"datasets/{dataset}"]
        previous = group.attrs.get("current_version")
        history = [v for v in group.attrs.get("history", []) if v not in (version, previous)]
        if previous and previous != version:
            history.append(previous)
        group.attrs.update({"history": history, "current_version": version})

    def prune(self, keep_versions: int = 2) -> dict[str, int]:
        """Delete every dataset version but the current one and the `keep_versions - 1` it replaced last, then the
        case arrays no kept version lists. Readers follow current pointers only, so nothing they read goes; run it
        when no preprocess is writing (a case written for a version not yet committed is listed by none)."""
        removed = {"versions": 0, "cases": 0}
        for dataset in self.datasets():
            group = self._root[f"datasets/{dataset}"]
            history = list(group.attrs.get("history", []))
            kept = {
                group.attrs["current_version"],
                *(history[len(history) - keep_versions + 1 :] if keep_versions > 1 else []),
            }
            versions = self._root[f"datasets/{dataset}/versions"]
            for name in [name for name, _ in versions.groups() if name not in kept]:
                del versions[name]
                removed["versions"] += 1
            listed = {
                case["key"] for name in kept if name in versions for case in versions[name].attrs["cases"].values()
            }
            cases = self._root[f"datasets/{dataset}/cases"]
            for key in [key for key, _ in cases.groups() if key not in listed]:
                del cases[key]
                removed["cases"] += 1
            group.attrs.update({"history": [v for v in history if v in kept]})
        return removed
