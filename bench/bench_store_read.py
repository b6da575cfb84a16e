"""Benchmark: training episodes per second drawn from the Zarr task store by the EpisodeSampler (one process).

Builds a store from the multi-center simulator in a temporary workspace through the real ingest and preprocess
flows, then draws episodes of N prompts + 1 query (images and label maps; tensorstore reads of only the needed
chunks), without and with the training augmentation. Prints one JSON line per configuration.
Aim (issue 3): at least 500 episodes/s for N=8, Q=1 at 256².
Usage: python bench/bench_store_read.py [--resolution 256] [--seconds 10]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch
from workspace import prepared_workspace


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        settings = prepared_workspace(Path(folder), args.resolution, n_cases=6)
        from promptseg.training.task_augment import TaskAugmentConfig, augment_batch
        from storage.sampler import EpisodeSampler, split_tasks
        from storage.task_store import TaskStore

        store = TaskStore.open(settings.store, args.resolution)
        tasks, _ = split_tasks(store.tasks(), [], store.resolution)
        generator = torch.Generator().manual_seed(0)
        for n_prompts, augment in ((1, False), (8, False), (8, True)):
            sampler = EpisodeSampler(store, tasks, seed=0)
            count, start = 0, time.perf_counter()
            while time.perf_counter() - start < args.seconds:
                episode = sampler.sample(n_prompts, 1)
                if augment:
                    arrays = {
                        "prompt_images": episode.prompt_images,
                        "prompt_masks": episode.prompt_masks,
                        "queries": episode.query_images,
                        "query_masks": episode.query_masks,
                    }
                    augment_batch(
                        {key: torch.from_numpy(value[None]).float() for key, value in arrays.items()},
                        TaskAugmentConfig(),
                        generator,
                    )
                count += 1
            elapsed = time.perf_counter() - start
            print(
                json.dumps(
                    {
                        "bench": "store_read",
                        "reader": "tensorstore",
                        "resolution": args.resolution,
                        "n_prompts": n_prompts,
                        "queries": 1,
                        "augment": augment,
                        "episodes_per_s": round(count / elapsed, 1),
                        "slices_per_s": round(count * 2 * (n_prompts + 1) / elapsed, 1),
                        "tasks": len(tasks),
                        "store_slices": sum(len(t.slices) for t in tasks),
                        "cpus": os.cpu_count(),
                    }
                ),
                flush=True,
            )


if __name__ == "__main__":
    main()
