"""Benchmark: held-out Dice of training variants over seeds: PromptSeg with and without the information
bottleneck, and the UniverSeg-style baseline, each trained with the same budget on the same store.

Builds a workspace (multi-center simulator + the embedded CT sample → ingest → preprocess), then for every
variant and seed trains through the platform (Ray Train, 2 workers), registers and evaluates the version
(held-out kidneys, prompts and queries from different cases, trivial baselines; the supervised UNet upper bound,
which does not depend on the variant, in the first run only).
Prints one JSON line per run and one summary line per variant (mean ± sd over seeds of the held-out Dice on
the synthetic centers at N ≥ 4).
Usage: python bench/bench_heldout.py [--steps 300] [--seeds 0 1 2] [--variants promptseg promptseg-ib universeg]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from workspace import prepared_workspace

from pipelines.demo import sample_manifests

if TYPE_CHECKING:
    from promptseg.evaluation.report import EvaluationReport

VARIANTS = {
    "promptseg": {"size": "tiny", "bottleneck": False},
    "promptseg-ib": {"size": "tiny", "bottleneck": True},
    "universeg": {"size": "universeg", "bottleneck": False},
}


def _dice(report: EvaluationReport, method: str, synthetic: bool = True) -> float:
    """Mean Dice at N ≥ 4 over the synthetic centers' held-out tasks (or, with synthetic=False, the real CT's)."""
    values = [
        r.dice
        for r in report.rows
        if r.method == method and r.dataset.startswith("synth") == synthetic and r.n_prompts >= 4
    ]
    return float(np.mean(values)) if values else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--supervised-steps", type=int, default=400)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="promptseg-bench-heldout-"))
    settings = prepared_workspace(folder, args.resolution, n_cases=4, samples=sample_manifests())
    from pipelines import stages

    results: dict[str, list[float]] = {}
    try:
        for variant in args.variants:
            for seed in args.seeds:
                start = time.perf_counter()
                trained = stages.train(
                    settings, steps=args.steps, seed=seed, run_name=f"{variant}-seed{seed}", **VARIANTS[variant]
                )
                train_s = time.perf_counter() - start
                evaluation = trained.evaluation  # the quick profile, run after every training
                if not results and args.supervised_steps:  # the supervised UNet does not depend on the variant: once
                    evaluation = stages.evaluate(
                        settings, trained.version, supervised_steps=args.supervised_steps
                    ).evaluation
                report = evaluation.report
                primary = "universeg" if variant == "universeg" else "promptseg"
                row = {
                    "bench": "heldout",
                    "variant": variant,
                    "seed": seed,
                    "steps": args.steps,
                    "resolution": args.resolution,
                    "train_s": round(train_s, 1),
                    "dice": _dice(report, primary),
                    "dice_real_ct": _dice(report, primary, synthetic=False),
                    "dice_real_ct_most_similar_prompt": _dice(report, "most_similar_prompt", False),
                    "dice_other_task_prompts": _dice(report, primary + "_other_task_prompts"),
                    "dice_mean_prompt_mask": _dice(report, "mean_prompt_mask"),
                    "dice_most_similar_prompt": _dice(report, "most_similar_prompt"),
                    "dice_supervised_unet": _dice(report, "supervised_unet"),
                }
                results.setdefault(variant, []).append(row["dice"])
                print(json.dumps(row), flush=True)
        for variant, values in results.items():
            print(
                json.dumps(
                    {
                        "bench": "heldout_summary",
                        "variant": variant,
                        "seeds": args.seeds,
                        "dice_mean": round(float(np.mean(values)), 4),
                        "dice_sd": round(float(np.std(values, ddof=1)) if len(values) > 1 else 0.0, 4),
                    }
                ),
                flush=True,
            )
    finally:
        stages.stop_serving(settings)


if __name__ == "__main__":
    main()
