"""Benchmark: the no-learning prior rule and the trivial baselines on the synthetic training tasks, easy and hard
(promptseg.training.synthetic_tasks), to show which of them intensity lookup solves.

Draws `--episodes` episodes per kind (easy; each hard kind alone) at 64², N = 1, 4, 8 prompts and 2 queries, from a
fixed seed, and scores the prior rule, the mean prompt mask and the most similar prompt on the queries. Prints one
JSON line per (kind, N) with the mean Dice of each method and a 95 % bootstrap interval over episodes for the rule.
Usage: python bench/bench_hard_tasks.py [--episodes 64]
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from promptseg.evaluation.baselines import mean_prompt_mask, most_similar_prompt_mask, prior_rule
from promptseg.evaluation.metrics import dice_score
from promptseg.training.synthetic_tasks import HARD_KINDS, hard_synthetic_batch, synthetic_batch

RESOLUTION, QUERIES = 64, 2


def _scores(batch: dict[str, torch.Tensor]) -> dict[str, list[float]]:
    """Per episode, each method's mean Dice over its queries."""
    scores: dict[str, list[float]] = {"prior_rule": [], "mean_prompt_mask": [], "most_similar_prompt": []}
    for i in range(len(batch["queries"])):
        images, masks = batch["prompt_images"][i].numpy(), batch["prompt_masks"][i].numpy()
        queries, truths = batch["queries"][i].numpy(), batch["query_masks"][i].numpy() > 0.5
        predictions = {
            "prior_rule": prior_rule(images, masks, queries),
            "mean_prompt_mask": mean_prompt_mask(masks, len(queries)),
            "most_similar_prompt": most_similar_prompt_mask(images, masks, queries),
        }
        for method, probabilities in predictions.items():
            dice = [dice_score(p[0] > 0.5, t[0]) for p, t in zip(probabilities, truths, strict=True)]
            scores[method].append(float(np.mean(dice)))
    return scores


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--episodes", type=int, default=64)
    args = parser.parse_args()
    makers = {"easy": lambda n, g: synthetic_batch(args.episodes, n, QUERIES, RESOLUTION, g)}
    for kind in HARD_KINDS:
        makers[kind] = lambda n, g, kind=kind: hard_synthetic_batch(
            args.episodes, n, QUERIES, RESOLUTION, g, kinds=(kind,)
        )
    for kind, make in makers.items():
        for n in (1, 4, 8):
            scores = _scores(make(n, torch.Generator().manual_seed(n)))
            rule = np.array(scores["prior_rule"])
            draws = rule[np.random.default_rng(0).integers(len(rule), size=(1000, len(rule)))].mean(axis=1)
            row = {"bench": "hard_tasks", "kind": kind, "n_prompts": n, "episodes": len(rule)}
            row |= {method: round(float(np.mean(values)), 3) for method, values in scores.items()}
            row["prior_rule_ci"] = [round(float(q), 3) for q in np.quantile(draws, [0.025, 0.975])]
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
