"""Benchmark: the real endpoint (Ray Serve + FastAPI over HTTP, CPU) — one query slice against a registered task
vs inline prompt pairs, and a whole volume against the task.

In a temporary workspace: a tiny PromptSeg with random weights is checkpointed, registered in MLflow and promoted,
served on a fresh Ray head (127.0.0.1) with the default serve settings, then queried over HTTP. Prints one JSON
line per case: p50/p95 latency of sequential requests (after a warm-up), and queries/s with `--clients`
concurrent clients. Cases: `inline` (N prompt pairs sent with every request), `cached` (the N pairs registered
once as a task; its encoding cached on the replica), `volume` (a NIfTI volume of `--slices` slices against the
task, returned as a NIfTI label volume). The volume is 256² × `--slices` at 0.8 × 0.8 × 2.5 mm (RAS); the model's
run carries the preparation tags training records (this code's recipe, no CT window, `--target-spacing`, by default
(1.2, 1.2, 3.0) mm, the median of the three simulated centers' target spacings), so the volume is resampled to it,
sliced into model-grid slices and the result resampled back; `n_slices` is the number of slices segmented, while
`slices_per_s` counts the volume's own slices (`--slices` / p50), as before the preparation path existed.
Usage: python bench/bench_endpoint_latency.py [--resolution 256] [--prompts 8] [--requests 30] [--slices 100]
    [--target-spacing 1.2,1.2,3.0]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import nibabel as nib
import numpy as np
from PIL import Image
from workspace import random_champion

from pipelines import environment, stages
from pipelines.settings import Settings
from promptseg.serving.client import PromptSegClient

VOLUME_SPACING = (0.8, 0.8, 2.5)


def _latencies(call: Callable[[], object], requests: int) -> list[float]:
    call()  # warm-up
    latencies = []
    for _ in range(requests):
        start = time.perf_counter()
        call()
        latencies.append(time.perf_counter() - start)
    return latencies


def _throughput(call: Callable[[], object], requests: int, clients: int) -> float:
    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(lambda _: call(), range(requests)))
    return requests / (time.perf_counter() - start)


def _line(case: str, latencies: list[float], per_second: float, **extra: object) -> str:
    return json.dumps(
        {
            "bench": "endpoint",
            "case": case,
            "p50_s": round(float(np.percentile(latencies, 50)), 4),
            "p95_s": round(float(np.percentile(latencies, 95)), 4),
            "requests": len(latencies),
            **extra,
            "requests_per_s_concurrent": round(per_second, 2),
            "cpus": os.cpu_count(),
        }
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--requests", type=int, default=30)
    parser.add_argument("--slices", type=int, default=100)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--port", type=int, default=18799)
    parser.add_argument("--target-spacing", default="1.2,1.2,3.0", help="the model card's target spacing (mm)")
    args = parser.parse_args()
    r, n = args.resolution, args.prompts
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        settings = Settings(workspace=root / "ws", resolution=r, serve={"port": args.port})
        environment.prepare(settings)
        target_spacing = [float(value) for value in args.target_spacing.split(",")]
        random_champion(settings, root / "checkpoint", target_spacing)
        rng = np.random.default_rng(0)
        images, masks = [], []
        for i in range(n):
            Image.fromarray(rng.integers(0, 255, (r, r), dtype=np.uint8)).save(root / f"p{i}.png")
            Image.fromarray((rng.random((r, r)) > 0.8).astype(np.uint8) * 255).save(root / f"m{i}.png")
            images.append(root / f"p{i}.png")
            masks.append(root / f"m{i}.png")
        query = root / "q.png"
        Image.fromarray(rng.integers(0, 255, (r, r), dtype=np.uint8)).save(query)
        volume = root / "volume.nii.gz"
        array = rng.normal(0, 200, (r, r, args.slices)).astype(np.float32)
        nib.save(nib.Nifti1Image(array, np.diag([*VOLUME_SPACING, 1.0])), volume)
        try:
            url = stages.serve(settings)
            with PromptSegClient(url) as client:
                task = client.create_task(images, masks, "CT").task_id
                cases = {
                    "inline": lambda: client.segment(images, masks, [query]),
                    "cached": lambda: client.segment_task(task, [query]),
                }
                for case, call in cases.items():
                    latencies = _latencies(call, args.requests)
                    per_second = _throughput(call, args.requests, args.clients)
                    print(_line(case, latencies, per_second, resolution=r, n_prompts=n, query_slices=1), flush=True)
                volume_requests = max(3, args.requests // 6)
                answers = []
                latencies = _latencies(lambda: answers.append(client.segment_volume(volume, task)), volume_requests)
                per_second = _throughput(lambda: client.segment_volume(volume, task), volume_requests, 2)
                slices_per_s = args.slices / float(np.percentile(latencies, 50))
                extra = {
                    "resolution": r,
                    "n_prompts": n,
                    "query_slices": args.slices,
                    "volume_shape": list(array.shape),
                    "volume_spacing": list(VOLUME_SPACING),
                    "target_spacing": target_spacing,
                    "n_slices": answers[-1].volume.n_slices,
                    "timings_ms": {key: round(value, 1) for key, value in answers[-1].timings_ms.items()},
                }
                print(_line("volume", latencies, per_second, **extra, slices_per_s=round(slices_per_s, 1)), flush=True)
        finally:
            stages.stop_serving(settings)


if __name__ == "__main__":
    main()
