"""Benchmark: one table per split (validation, test) with every method, the ablations and the controls, over
training seeds, with 95 % bootstrap intervals over tasks.

Builds a workspace (the simulator's three centers with 4 cases each and the six real datasets of data/samples →
ingest → preprocess, 64²), then trains each variant for each seed through the platform (Ray Train, 2 workers, the
same loop and budget: steps × batch × resolution) on the training split, and evaluates the checkpoint on the
validation and the test split (the quick profile's episodes, N = 1, 4, 8; the controls and the token-path
ablation at N = 8). Variants: `promptseg` (all priors), `promptseg-no-priors` (`--priors none`), single-prior
variants, and `universeg` (the UniverSeg-style network). Prints one JSON line per (variant, seed, split) and, per
split, one line per method: Dice at each N as the mean over tasks of the seed-averaged task means with its bootstrap
interval, and the spread over seeds (sd of the per-seed means) beside it. Every run's scored rows are appended to
`--rows` (JSON lines, with the store snapshot it was measured on) as soon as it is evaluated, so `--summarize` prints
the tables from the runs that finished. Benchmark workspaces share one pseudonym key (bench/workspace.py), so a later
run on the same store snapshot draws the same episodes and may append to the same file (more seeds or variants);
rows of different snapshots are refused.
Usage: python bench/bench_splits.py [--steps 300] [--seeds 0 1 2] [--variants promptseg universeg ...] [--rows F]
       python bench/bench_splits.py --summarize F
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from workspace import prepared_workspace

from pipelines.demo import sample_manifests

VARIANTS = {
    "promptseg": {"size": "tiny"},
    "promptseg-no-priors": {"size": "tiny", "priors": []},
    "promptseg-intensity-only": {"size": "tiny", "priors": ["intensity"]},
    "promptseg-location-only": {"size": "tiny", "priors": ["location"]},
    "promptseg-prototypes-only": {"size": "tiny", "priors": ["prototypes"]},
    "universeg": {"size": "universeg"},
}
N_PROMPTS = [1, 4, 8]


def _cells(rows: list, method: str, draws: int) -> dict[str, dict[str, float]]:
    from promptseg.evaluation.scoring import over_resamples

    cells = {}
    for n in N_PROMPTS:
        chosen = [r for r in rows if r.method == method and r.n_prompts == n]
        if chosen:
            stat = over_resamples(chosen, "dice", draws)
            fp = over_resamples(chosen, "fp_rate", draws)
            cells[str(n)] = {
                "dice": round(stat.mean, 4),
                "ci_low": round(stat.ci_low, 4),
                "ci_high": round(stat.ci_high, 4),
                "fp_rate": round(fp.mean, 4),
                "tasks": stat.tasks,
            }
    return cells


def _summarize(records: list[dict]) -> None:
    """One `splits_summary` line per (split, variant, method) from the saved rows of every finished run."""
    from promptseg.evaluation.report import EpisodeScore
    from promptseg.evaluation.scoring import paired_difference

    snapshots = {record["snapshot"] for record in records}
    if len(snapshots) > 1:
        raise SystemExit(f"rows of different store snapshots cannot be pooled: {sorted(snapshots)}")
    rows: dict[tuple[str, str], list] = {}
    per_seed: dict[tuple[str, str, str], dict[int, list[float]]] = {}
    for record in records:
        row = EpisodeScore.model_validate(record["row"])
        rows.setdefault((record["variant"], record["split"]), []).append(row)
        if row.n_prompts == 8:
            key = (record["split"], record["variant"], row.method)
            per_seed.setdefault(key, {}).setdefault(record["seed"], []).append(row.dice)
    for (variant, split), collected in rows.items():
        for method in dict.fromkeys(r.method for r in collected):
            seed_means = [float(np.mean(v)) for v in per_seed.get((split, variant, method), {}).values()]
            contribution = None
            if method == variant:
                gains = {
                    str(n): paired_difference([r for r in collected if r.n_prompts == n], variant, "prior_rule")
                    for n in N_PROMPTS
                }
                contribution = {
                    n: [round(g.mean, 4), round(g.ci_low, 4), round(g.ci_high, 4)] for n, g in gains.items()
                }
            print(
                json.dumps(
                    {
                        "bench": "splits_summary",
                        "split": split,
                        "variant": variant,
                        "method": method,
                        "seeds": len(seed_means),
                        "cells": _cells(collected, method, 1000),
                        "seed_sd_n8": round(float(np.std(seed_means, ddof=1)), 4) if len(seed_means) > 1 else None,
                        "learned_contribution": contribution,
                    }
                ),
                flush=True,
            )


def _run(args: argparse.Namespace, rows_file: Path) -> None:
    """Trains and evaluates every (variant, seed), seed by seed, appending each run's rows to `rows_file`."""
    folder = Path(tempfile.mkdtemp(prefix="promptseg-bench-splits-"))
    settings = prepared_workspace(folder, 64, n_cases=4, samples=sample_manifests())
    from pipelines import stages
    from promptseg.evaluation.heldout import evaluate
    from promptseg.evaluation.report import eval_spec
    from promptseg.evaluation.scoring import paired_difference
    from promptseg.nets.checkpoint import load_model
    from storage.task_store import TaskStore

    store = TaskStore.open(settings.store, settings.resolution)
    snapshot = store.snapshot_id()
    runs = [
        (variant, seed)
        for seed in sorted(set(args.seeds) | set(args.ablation_seeds or []))
        for variant in args.variants
        if seed in (args.seeds if variant == "promptseg" or args.ablation_seeds is None else args.ablation_seeds)
    ]
    try:
        for variant, seed in runs:
            start = time.perf_counter()
            trained = stages.train(
                settings,
                steps=args.steps,
                seed=seed,
                run_name=f"{variant}-seed{seed}",
                register=False,
                evaluate=False,
                **VARIANTS[variant],
            )
            train_s = time.perf_counter() - start
            network = load_model(trained.checkpoint_dir)
            for split in ("validation", "test"):
                spec = eval_spec("quick", settings.training.splits, split, n_prompts=N_PROMPTS)
                report = evaluate(network, store, spec, folder / "reports" / f"{variant}-{seed}-{split}").report
                renamed = [
                    r.model_copy(update={"method": r.method.replace(report.primary, variant, 1)})
                    if r.method.startswith(report.primary)
                    else r
                    for r in report.rows
                ]
                with rows_file.open("a") as out:
                    for row in renamed:
                        record = {"variant": variant, "seed": seed, "split": split, "snapshot": snapshot}
                        record["row"] = row.model_dump()
                        out.write(json.dumps(record) + "\n")
                methods = list(dict.fromkeys(r.method for r in renamed))
                gain = paired_difference(renamed, variant, "prior_rule")
                dice_n8 = {m: [r.dice for r in renamed if r.method == m and r.n_prompts == 8] for m in methods}
                print(
                    json.dumps(
                        {
                            "bench": "splits_run",
                            "variant": variant,
                            "seed": seed,
                            "split": split,
                            "steps": args.steps,
                            "train_s": round(train_s, 1),
                            "tasks": len(report.tasks),
                            "dice_n8": {m: round(float(np.mean(v)), 4) for m, v in dice_n8.items() if v},
                            "learned_contribution_all_n": [round(gain.mean, 4), round(gain.ci_low, 4)],
                        }
                    ),
                    flush=True,
                )
    finally:
        stages.stop_serving(settings)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--variants", nargs="+", default=["promptseg"], choices=list(VARIANTS))
    parser.add_argument("--ablation-seeds", type=int, nargs="+", default=None, help="seeds of the other variants")
    parser.add_argument("--rows", type=Path, default=None, help="JSON lines file the runs' rows are appended to")
    parser.add_argument("--summarize", type=Path, default=None, help="print the tables of a rows file and stop")
    args = parser.parse_args()
    if args.summarize is None:
        rows_file = args.rows or Path(tempfile.mkdtemp(prefix="promptseg-bench-splits-rows-")) / "rows.jsonl"
        print(json.dumps({"bench": "splits_rows", "path": str(rows_file)}), flush=True)
        _run(args, rows_file)
    else:
        rows_file = args.summarize
    _summarize([json.loads(line) for line in rows_file.read_text().splitlines() if line.strip()])


if __name__ == "__main__":
    main()
