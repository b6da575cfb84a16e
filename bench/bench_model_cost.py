"""Benchmark: parameters and FLOPs per query slice for every in-context network, with and without a cached task.

FLOPs are counted by torch's FlopCounterMode (matrix products, convolutions, attention) on meta tensors, so
even `base` at N=64 costs no compute. "cached" is one query against an encoding computed beforehand;
"uncached" adds encoding the N prompts for that one query. The UniverSeg-style baseline has no reusable
encoding: its cached and uncached costs are equal. Prints one JSON line per (size, N).
Usage: python bench/bench_model_cost.py [--resolution 256] [--prompts 1 8 16 64]
"""

from __future__ import annotations

import argparse
import json

import torch
from torch.utils.flop_counter import FlopCounterMode

from promptseg.nets.factory import MODEL_SIZES, build_model, model_config


def _flops(function, *args) -> tuple[int, object]:
    with FlopCounterMode(display=False) as counter:
        result = function(*args)
    return counter.get_total_flops(), result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--prompts", type=int, nargs="+", default=[1, 8, 16, 64])
    args = parser.parse_args()
    r = args.resolution
    for size in MODEL_SIZES:
        with torch.device("meta"):
            network = build_model(model_config(size, r)).eval()
        parameters = sum(p.numel() for p in network.parameters())
        for n in args.prompts:
            with torch.device("meta"), torch.no_grad():
                images, masks, query = (
                    torch.empty(1, n, 1, r, r),
                    torch.empty(1, n, 1, r, r),
                    torch.empty(1, 1, 1, r, r),
                )
                encode_flops, encoding = _flops(network.encode_prompts, images, masks)
                segment_flops, _ = _flops(network.segment, encoding, query)
            print(
                json.dumps(
                    {
                        "bench": "model_cost",
                        "size": size,
                        "resolution": r,
                        "n_prompts": n,
                        "parameters_m": round(parameters / 1e6, 2),
                        "gflops_per_query_cached": round(segment_flops / 1e9, 2),
                        "gflops_per_query_uncached": round((encode_flops + segment_flops) / 1e9, 2),
                        "gflops_encode_task": round(encode_flops / 1e9, 2),
                    }
                ),
                flush=True,
            )


if __name__ == "__main__":
    main()
