"""Benchmark: CPU (or GPU) latency per query slice against a cached task, through the Predictor.

A randomly initialized network of each size (weights do not change the cost) encodes N prompt pairs once; then
single query slices of a native 256×256 image (harmonized, segmented, mapped back) are timed, and the network's
`segment` alone. Prints one JSON line per (size, N) with median and p90 seconds per query.
Aim (issue 4): tiny at 256² ≤ 0.2 s per query with a cached task on the 2-core CPU.
Usage: python bench/bench_query_latency.py [--sizes tiny small] [--prompts 8 16] [--repeats 20] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from promptseg.inference.predictor import Predictor
from promptseg.nets.factory import build_model, model_config


def _seconds(repeats: int, function, *args) -> list[float]:
    with torch.inference_mode():
        function(*args)  # warm-up
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            function(*args)
            times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", nargs="+", default=["tiny", "small"])
    parser.add_argument("--prompts", type=int, nargs="+", default=[8, 16])
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    r = args.resolution
    for size in args.sizes:
        torch.manual_seed(0)
        predictor = Predictor(build_model(model_config(size, r)), batch_size=1)
        for n in args.prompts:
            images = [rng.uniform(0, 255, (r, r)).astype(np.float32) for _ in range(n)]
            masks = [(rng.uniform(size=(r, r)) > 0.8).astype(np.uint8) for _ in range(n)]
            query = rng.uniform(0, 255, (r, r)).astype(np.float32)
            start = time.perf_counter()
            task = predictor.encode_task(images, masks, "MR")
            encode_s = time.perf_counter() - start
            end_to_end = _seconds(args.repeats, predictor.segment, task, [query], "MR")
            grid = torch.rand(1, 1, 1, r, r, device=predictor.device)
            network = _seconds(args.repeats, predictor.network.segment, task.encoding, grid)
            print(
                json.dumps(
                    {
                        "bench": "query_latency",
                        "device": str(predictor.device),
                        "threads": args.threads,
                        "size": size,
                        "resolution": r,
                        "n_prompts": n,
                        "encode_task_s": round(encode_s, 4),
                        "predictor_query_median_s": round(float(np.median(end_to_end)), 4),
                        "predictor_query_p90_s": round(float(np.percentile(end_to_end, 90)), 4),
                        "network_query_median_s": round(float(np.median(network)), 4),
                    }
                ),
                flush=True,
            )


if __name__ == "__main__":
    main()
