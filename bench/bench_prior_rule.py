"""Benchmark: the no-learning prior rule on the old held-out benchmark's episodes, before it is used anywhere.

Rebuilds the store of the benchmark before the splits (bench_heldout.py until 2026-12-01: the simulator's three
centers with 4 cases each plus ct-abdomen-61, 64², kidneys held out, the store's CT window pooled from the other
labels) and its quick evaluation's episodes (N = 1, 4, 8; 3 resamples; 4 queries; no empty queries; the same
seeded draw per task, N and resample; cases are named by this workspace's pseudonyms, so the query case a draw picks
can differ). Scores the prior rule and the trivial baselines on them; the network is a random-weight tiny PromptSeg
that only fills the evaluation's primary slot. Prints one JSON line per method: mean Dice at N ≥ 4 and at N = 8 on
the synthetic kidneys, and at N ≥ 4 on the real CT kidneys. Expected (issue 16): rule 0.850 synthetic (0.865 at
N = 8), 0.665 real CT; mean prompt mask 0.329; most similar prompt 0.446 synthetic, 0.578 real CT.
Usage: python bench/bench_prior_rule.py
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np
import torch
from workspace import prepared_workspace

from pipelines.demo import SAMPLES

OLD_HELD_OUT = ["kidney*"]


def main() -> None:
    os.environ["PROMPTSEG_VALIDATION"] = json.dumps(OLD_HELD_OUT)
    os.environ["PROMPTSEG_TEST"] = "[]"
    folder = Path(tempfile.mkdtemp(prefix="promptseg-bench-prior-rule-"))
    settings = prepared_workspace(folder, 64, n_cases=4, samples=[SAMPLES / "ct-abdomen-61" / "manifest.yaml"])
    from promptseg.evaluation.heldout import evaluate
    from promptseg.evaluation.report import eval_spec
    from promptseg.nets.factory import build_model, model_config
    from storage.task_store import TaskStore

    torch.manual_seed(0)
    network = build_model(model_config("tiny", 64)).eval()
    spec = eval_spec("quick", settings.training.splits, queries=4, resamples=3, empty_queries=0)
    store = TaskStore.open(settings.store, 64)
    report = evaluate(network, store, spec, folder / "report").report
    for method in ("prior_rule", "mean_prompt_mask", "most_similar_prompt"):

        def dice(synthetic: bool, smallest: int, method: str = method) -> float:
            values = [
                r.dice
                for r in report.rows
                if r.method == method and r.dataset.startswith("synth") == synthetic and r.n_prompts >= smallest
            ]
            return round(float(np.mean(values)), 3)

        row = {
            "bench": "prior_rule_reproduction",
            "method": method,
            "dice_synthetic_n_ge_4": dice(True, 4),
            "dice_synthetic_n8": dice(True, 8),
            "dice_real_ct_n_ge_4": dice(False, 4),
            "tasks": len(report.tasks),
        }
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
