"""Benchmark: latency of one /v1/segment request through the real endpoint (Ray Serve + FastAPI, CPU).

In a temporary workspace: a tiny PromptSeg with random weights is checkpointed, registered in MLflow and promoted,
served on a fresh Ray head (127.0.0.1), then queried over HTTP with N prompt pairs and one query (PNG, native
size = the resolution). Prints one JSON line per N with p50/p95 latency and the server-side timings.
Usage: python bench/bench_endpoint_latency.py [--resolution 128] [--requests 30]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import mlflow
import numpy as np
import torch
from PIL import Image

from pipelines import environment, stages
from promptseg.checkpoint import save_model
from promptseg.client import PromptSegClient
from promptseg.model import build_model, model_config
from promptseg.settings import Settings
from promptseg.tracking import use_experiment


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--resolution", type=int, default=128)
    parser.add_argument("--requests", type=int, default=30)
    parser.add_argument("--port", type=int, default=18799)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        settings = Settings(workspace=root / "ws", resolution=args.resolution, serve_port=args.port)
        environment.prepare(settings)
        torch.manual_seed(0)
        save_model(build_model(model_config("tiny", args.resolution)), root / "checkpoint")
        experiment_id = use_experiment(settings.tracking_uri, "bench", settings.artifact_root)
        with mlflow.start_run(experiment_id=experiment_id) as run:
            run_id = run.info.run_id
        version = stages.register(settings, run_id, root / "checkpoint")
        stages.promote(settings, version)
        try:
            url = stages.serve(settings)
            rng = np.random.default_rng(0)
            r = args.resolution
            for n in (1, 4, 16):
                paths = {"images": [], "masks": []}
                for i in range(n):
                    Image.fromarray(rng.integers(0, 255, (r, r), dtype=np.uint8)).save(root / f"p{i}.png")
                    Image.fromarray((rng.random((r, r)) > 0.8).astype(np.uint8) * 255).save(root / f"m{i}.png")
                    paths["images"].append(root / f"p{i}.png")
                    paths["masks"].append(root / f"m{i}.png")
                Image.fromarray(rng.integers(0, 255, (r, r), dtype=np.uint8)).save(root / "q.png")
                latencies, server = [], []
                with PromptSegClient(url) as client:
                    client.segment(paths["images"], paths["masks"], [root / "q.png"])  # warm-up
                    for _ in range(args.requests):
                        start = time.perf_counter()
                        response = client.segment(paths["images"], paths["masks"], [root / "q.png"])
                        latencies.append(1e3 * (time.perf_counter() - start))
                        server.append(response.timings_ms)
                print(
                    json.dumps(
                        {
                            "bench": "endpoint_latency",
                            "resolution": r,
                            "n_prompts": n,
                            "queries": 1,
                            "requests": args.requests,
                            "p50_ms": round(float(np.percentile(latencies, 50)), 1),
                            "p95_ms": round(float(np.percentile(latencies, 95)), 1),
                            "server_encode_prompts_ms": round(
                                float(np.median([s["encode_prompts"] for s in server])), 1
                            ),
                            "server_segment_ms": round(float(np.median([s["segment"] for s in server])), 1),
                            "cpus": os.cpu_count(),
                        }
                    )
                )
        finally:
            stages.stop_serving(settings)


if __name__ == "__main__":
    main()
