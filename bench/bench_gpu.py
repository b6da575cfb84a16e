"""Benchmark (GPU): queries/s with a cached task and training step time, PromptSeg `base` beside the
UniverSeg-style baseline, at the same resolution, precision (bf16 autocast) and batch size, through the same
Predictor API, in one run. Prints one JSON line per measurement; on a machine without CUDA it prints one
"skipped" line and exits 0.
Aim (issue 4): base with a cached task serves ≥ 10× the queries/s of the UniverSeg-style baseline at N=16.
Usage: python bench/bench_gpu.py [--prompts 16] [--queries 32] [--batch 2] [--steps 10] [--compile]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from promptseg.factory import build_model, model_config
from promptseg.losses import segmentation_loss
from promptseg.predictor import MODEL_GRID, Predictor


def _timed(function, repeats: int) -> float:
    function()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        function()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeats


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", nargs="+", default=["base", "universeg"])
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--queries", type=int, default=32)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--compile", action="store_true")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print(json.dumps({"bench": "gpu", "skipped": "no CUDA device"}))
        return
    torch.backends.cuda.matmul.allow_tf32 = True
    r, n = args.resolution, args.prompts
    rng = np.random.default_rng(0)
    images = [rng.uniform(size=(r, r)).astype(np.float32) for _ in range(n)]
    masks = [(rng.uniform(size=(r, r)) > 0.8).astype(np.uint8) for _ in range(n)]
    queries = [rng.uniform(size=(r, r)).astype(np.float32) for _ in range(args.queries)]
    device_name = torch.cuda.get_device_name()
    for size in args.sizes:
        torch.manual_seed(0)
        network = build_model(model_config(size, r)).cuda()
        predictor = Predictor(network, device="cuda", batch_size=args.queries)
        if args.compile:
            predictor.network.segment = torch.compile(predictor.network.segment)
        task = predictor.encode_task(images, masks, MODEL_GRID)
        seconds = _timed(lambda predictor=predictor, task=task: predictor.segment(task, queries, MODEL_GRID), 5)
        print(
            json.dumps(
                {
                    "bench": "gpu_queries",
                    "device": device_name,
                    "size": size,
                    "resolution": r,
                    "n_prompts": n,
                    "precision": "bf16-autocast",
                    "compiled": args.compile,
                    "queries_per_s": round(args.queries / seconds, 1),
                    "max_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
                }
            ),
            flush=True,
        )
        network.train()
        optimizer = torch.optim.AdamW(network.parameters(), lr=1e-4)
        batch = {
            "prompt_images": torch.rand(args.batch, n, 1, r, r, device="cuda"),
            "prompt_masks": (torch.rand(args.batch, n, 1, r, r, device="cuda") > 0.8).float(),
            "queries": torch.rand(args.batch, 1, 1, r, r, device="cuda"),
            "query_masks": (torch.rand(args.batch, 1, 1, r, r, device="cuda") > 0.8).float(),
        }

        def step(network=network, optimizer=optimizer, batch=batch) -> None:
            with torch.autocast("cuda", dtype=torch.bfloat16):
                logits = network(batch["prompt_images"], batch["prompt_masks"], batch["queries"])
            loss = segmentation_loss(logits.float(), batch["query_masks"])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        torch.cuda.reset_peak_memory_stats()
        print(
            json.dumps(
                {
                    "bench": "gpu_train_step",
                    "device": device_name,
                    "size": size,
                    "resolution": r,
                    "n_prompts": n,
                    "batch": args.batch,
                    "precision": "bf16-autocast",
                    "step_s": round(_timed(step, args.steps), 4),
                    "max_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
                }
            ),
            flush=True,
        )
        del network, predictor, optimizer, batch
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
