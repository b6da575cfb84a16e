"""The store's one CT window: the intensity range every CT dataset of a task store is clipped to.

It is pooled from the ingest records' per-label intensity sketches (storage.fingerprint) of the CT datasets, over
the labels that training may see only: a label whose every task the held-out spec names (storage.sampler) never
shapes the window, so held-out results stay unbiased. The window is the pooled 0.5 and 99.5 percentiles, each
sketch weighted by the number of samples it summarizes. Records ingested before sketches existed have none and do
not contribute. The preprocess flow records the window in the store; training copies it into every model card; the
endpoint uses it for CT sent without a window.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from storage.harmonize import PERCENTILES
from storage.ingest_record import IngestRecord
from storage.sampler import is_held_out
from storage.task_store import Task


def _trains_on(record: IngestRecord, value: str, held_out: list[str]) -> bool:
    """Whether training sees label `value` of `record` on at least one axis."""
    name = record.labels.get(value, value)
    tasks = [Task(record.dataset, int(value), name, axis, (), record.center) for axis in range(3)]
    return not all(is_held_out(task, held_out) for task in tasks)


def store_ct_window(records: Sequence[IngestRecord], held_out: list[str]) -> tuple[float, float] | None:
    """The pooled 0.5/99.5 percentiles of the CT training labels' intensities; None without any CT sketch."""
    points, weights = [], []
    for record in records:
        if record.modality.upper() != "CT":
            continue
        for value, sketch in record.fingerprint.label_intensity.items():
            if _trains_on(record, value, held_out):
                points.append(np.asarray(sketch.quantiles, float))
                weights.append(np.full(len(sketch.quantiles), sketch.samples / len(sketch.quantiles)))
    if not points:
        return None
    values, weight = np.concatenate(points), np.concatenate(weights)
    order = np.argsort(values, kind="stable")
    cumulative = np.cumsum(weight[order]) - 0.5 * weight[order]
    low, high = np.interp(np.array(PERCENTILES) / 100 * weight.sum(), cumulative, values[order])
    return float(low), float(high)
