"""Benchmark: preprocessing throughput (cases/s, MB/s of source voxels) with 1 and 2 Dask workers.

Writes the multi-center simulator's datasets, ingests them once, then runs the real `preprocess` flow into a fresh
store per worker count (no cache hits: each run has its own workspace copy of the ingest records).
Usage: python bench/bench_preprocess.py [--cases 6] [--resolution 256]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cases", type=int, default=6)
    parser.add_argument("--resolution", type=int, default=256)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        os.environ["PROMPTSEG_WORKSPACE"] = str(root / "ingest")
        from pipelines import environment, stages
        from pipelines.settings import Settings
        from storage.ingest_record import load_ingest_records
        from storage.synthetic import write_synthetic_datasets

        base = Settings(resolution=args.resolution)
        environment.prepare(base)
        sources = write_synthetic_datasets(root / "raw", n_cases=args.cases, seed=0)
        ingested = stages.ingest(base, sources)
        records = load_ingest_records(base.data.raw_dir)
        cases = sum(len(r.cases) for r in records)
        voxel_bytes = sum(4 * int(np.prod(c.shape)) for r in records for c in r.cases)
        for workers in (1, 2):
            settings = Settings(
                workspace=root / f"w{workers}", resolution=args.resolution, data={"dask_workers": workers}
            )
            shutil.copytree(base.data.raw_dir, settings.data.raw_dir)
            start = time.perf_counter()
            report = stages.preprocess(settings)
            seconds = time.perf_counter() - start
            print(
                json.dumps(
                    {
                        "bench": "preprocess",
                        "dask_workers": workers,
                        "resolution": args.resolution,
                        "cases": cases,
                        "datasets": len(ingested.datasets),
                        "slices": sum(d.slices for d in report.datasets),
                        "seconds": round(seconds, 1),
                        "flow_seconds": report.seconds,
                        "cases_per_s": round(cases / seconds, 2),
                        "source_mb_per_s": round(voxel_bytes / 1e6 / seconds, 2),
                    }
                ),
                flush=True,
            )


if __name__ == "__main__":
    main()
