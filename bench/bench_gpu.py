"""Benchmark (GPU, torch only): queries/s with a cached task and training step time, PromptSeg `base` beside the
UniverSeg-style baseline, at the same resolution, precision (bf16 autocast) and batch size, through the same
Predictor API, in one run. Each training step also gets its episodes/s and model FLOPs utilization (FLOPs of one
step counted by torch's FlopCounterMode over the bf16 peak of the device), set beside the sampler's episodes/s
per CPU process to say how many loader processes keep the GPU busy. Prints one JSON line per measurement; on a
machine without CUDA it prints one "skipped" line and exits 0.
Aims: base with a cached task serves ≥ 10× the queries/s of the UniverSeg-style baseline at N=16 (issue 4); MFU ≥ 40 %
in bf16 on an H100 for base with the GPU never waiting on data (issue 5).
Usage: python bench/bench_gpu.py [--prompts 16] [--queries 32] [--batch 2] [--steps 10] [--compile]
       [--sampler-episodes-per-s 972] [--peak-tflops 989]
"""

from __future__ import annotations

import argparse
import json
import math
import time

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from promptseg.inference.predictor import MODEL_GRID, Predictor
from promptseg.nets.factory import build_model, model_config
from promptseg.nets.losses import segmentation_loss


def _timed(function, repeats: int) -> float:
    function()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        function()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeats


PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L4": 121.0}  # dense, no sparsity


def _peak_tflops(device_name: str, given: float | None) -> float:
    if given:
        return given
    return next((peak for key, peak in PEAK_BF16_TFLOPS.items() if key in device_name), float("nan"))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", nargs="+", default=["base", "universeg"])
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--queries", type=int, default=32)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--compile", action="store_true")
    parser.add_argument(
        "--sampler-episodes-per-s",
        type=float,
        default=972.0,
        help="one loader process's episodes/s at N=8, 256² (bench_store_read.py on the 2-core machine)",
    )
    parser.add_argument("--peak-tflops", type=float, default=None, help="the device's dense bf16 peak")
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
        with FlopCounterMode(display=False) as counter:
            step()
        step_s = _timed(step, args.steps)
        episodes_per_s = args.batch / step_s
        achieved_tflops = counter.get_total_flops() / step_s / 1e12
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
                    "step_s": round(step_s, 4),
                    "episodes_per_s": round(episodes_per_s, 1),
                    "tflops_per_step": round(counter.get_total_flops() / 1e12, 3),
                    "mfu": round(achieved_tflops / _peak_tflops(device_name, args.peak_tflops), 3),
                    "loader_processes_needed": math.ceil(episodes_per_s / args.sampler_episodes_per_s),
                    "max_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
                }
            ),
            flush=True,
        )
        del network, predictor, optimizer, batch
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
