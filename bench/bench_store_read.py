"""Benchmark: training episodes per second read from the Zarr task store (one process).

Builds a store from the synthetic datasets in a temporary folder (storage API, no Prefect), then draws
episodes of N prompts + 1 query through the EpisodeSampler. Prints one JSON line per configuration.
Usage: python bench/bench_store_read.py [--resolution 128] [--seconds 10]
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

from storage.fingerprint import dataset_fingerprint
from storage.harmonize import normalization_from_fingerprint
from storage.preprocess import inspect_case, preprocess_case, version_id_for
from storage.raw_dataset import load_raw_dataset
from storage.sampler import EpisodeSampler, split_tasks
from storage.synthetic import write_synthetic_datasets
from storage.task_store import TaskStore


def build_store(root: Path, resolution: int) -> TaskStore:
    store = TaskStore.open(str(root / "store.zarr"), resolution, create=True)
    for folder in write_synthetic_datasets(root / "raw", n_cases=6, seed=0):
        dataset = load_raw_dataset(folder)
        cases = [inspect_case(case, dataset.labels) for case in dataset.cases]
        fingerprint = dataset_fingerprint(cases)
        params = normalization_from_fingerprint(dataset.modality, fingerprint)
        summaries = [preprocess_case(store, dataset.name, case, params, 2, 0.1) for case in cases]
        record = {"cases": cases, "labels": {str(k): v for k, v in dataset.labels.items()}}
        store.commit_version(
            dataset.name,
            version_id_for(record, [s["key"] for s in summaries]),
            {"labels": record["labels"], "fingerprint": fingerprint},
            summaries,
        )
    return store


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--resolution", type=int, default=128)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        store = build_store(Path(folder), args.resolution)
        tasks, _ = split_tasks(store.tasks(), [], store.resolution)
        slices = sum(len(t.slices) for t in tasks)
        for n_prompts in (1, 8):
            sampler = EpisodeSampler(store, tasks, seed=0)
            count, start = 0, time.perf_counter()
            while time.perf_counter() - start < args.seconds:
                sampler.sample(n_prompts, 1)
                count += 1
            elapsed = time.perf_counter() - start
            print(
                json.dumps(
                    {
                        "bench": "store_read",
                        "reader": "zarr-python",
                        "resolution": args.resolution,
                        "n_prompts": n_prompts,
                        "slices_per_episode": n_prompts + 1,
                        "episodes_per_s": round(count / elapsed, 1),
                        "slices_per_s": round(count * (n_prompts + 1) / elapsed, 1),
                        "store_slices": slices,
                        "tasks": len(tasks),
                        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
                        "numpy": np.__version__,
                    }
                )
            )


if __name__ == "__main__":
    main()
