"""Benchmark: training throughput (episodes/s) of the real Ray Train run with 1 vs 2 CPU workers.

Builds a workspace (multi-center simulator → ingest → preprocess), then trains the tiny model through
`stages.train` with each worker count for the same steps and per-worker batch. Throughput is measured in steady
state from the per-step loss timestamps that rank 0 logs to MLflow (from the first checkpoint to the last step),
so the Ray start-up and the first steps do not count; wall time including start-up is printed too. Prints one JSON
line per worker count and one line with their ratio.
Usage: python bench/bench_train_workers.py [--workers 1 2] [--steps 120] [--batch 4] [--resolution 128]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from workspace import prepared_workspace


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--resolution", type=int, default=128)
    args = parser.parse_args()
    settings = prepared_workspace(Path(tempfile.mkdtemp(prefix="promptseg-bench-workers-")), args.resolution, 4)
    from mlflow import MlflowClient

    from pipelines import stages

    checkpoint_every = max(1, args.steps // 6)
    rates = {}
    try:
        for workers in args.workers:
            start = time.perf_counter()
            trained = stages.train(
                settings,
                run_name=f"workers-{workers}",
                register=False,
                evaluate=False,
                steps=args.steps,
                num_workers=workers,
                batch_size=args.batch,
                checkpoint_every=checkpoint_every,
            )
            wall = time.perf_counter() - start
            history = MlflowClient(settings.registry.tracking_uri).get_metric_history(trained.run_id, "loss")
            stamps = {m.step: m.timestamp / 1000 for m in history}
            first, last = checkpoint_every, args.steps
            seconds = stamps[last] - stamps[first]
            rate = (last - first) * args.batch * workers / seconds
            rates[workers] = rate
            print(
                json.dumps(
                    {
                        "bench": "train_workers",
                        "workers": workers,
                        "batch_per_worker": args.batch,
                        "global_batch": args.batch * workers,
                        "resolution": args.resolution,
                        "steps": args.steps,
                        "steady_episodes_per_s": round(rate, 2),
                        "steady_step_s": round(seconds / (last - first), 3),
                        "wall_s_incl_startup": round(wall, 1),
                        "cpus": os.cpu_count(),
                    }
                ),
                flush=True,
            )
        if len(rates) > 1:
            low, high = min(rates), max(rates)
            ratio = round(rates[high] / rates[low], 2)
            print(json.dumps({"bench": "train_workers_ratio", f"workers_{high}_over_{low}": ratio}))
    finally:
        stages.stop_serving(settings)


if __name__ == "__main__":
    main()
