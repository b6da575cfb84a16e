"""Benchmark: a learning curve, validation Dice against training steps and time, for one training setting.

Builds the benchmark workspace (bench/workspace.py: the simulator's three centers with 4 cases each and the six
real datasets of data/samples, 64²), then trains in chunks through the platform (Ray Train, 2 workers): each chunk is
a run of `--chunk-steps` steps that starts from the previous chunk's checkpoint (`init_weights`; the first from
`--init` or from scratch) with its own warm-up and cosine schedule, so no progress depends on a long-lived process
and a curve continues in a later session (`--init <checkpoint folder> --start-step S --start-seconds T`). After each
chunk the checkpoint is evaluated on the validation split (quick profile at `--n-prompts`) beside the prior rule and
the baselines. One JSON line per chunk: cumulative steps and training seconds, Dice per N of the model and of the
rule, the learned contribution with its interval, and the chunk's checkpoint folder (kept under `--out`).
`--option key=value` sets any other TrainConfig field (values as JSON, e.g. `hard_synthetic_share=0.25`).
Usage: python bench/bench_learning_curve.py [--size tiny] [--chunks 4] [--chunk-steps 300] [--option k=v ...]
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

from workspace import prepared_workspace

from pipelines.demo import sample_manifests


def _options(pairs: list[str]) -> dict:
    options = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        options[key] = json.loads(value)
    return options


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", default="tiny")
    parser.add_argument("--chunks", type=int, default=4)
    parser.add_argument("--chunk-steps", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n-prompts", type=int, nargs="+", default=[1, 4, 8, 16])
    parser.add_argument("--option", action="append", default=[], help="another TrainConfig field, key=json")
    parser.add_argument("--init", type=Path, default=None, help="checkpoint folder the first chunk starts from")
    parser.add_argument("--start-step", type=int, default=0)
    parser.add_argument("--start-seconds", type=float, default=0.0)
    parser.add_argument("--out", type=Path, default=None, help="folder the chunks' checkpoints are kept in")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="promptseg-bench-curve-"))
    out = args.out or folder / "chunks"
    out.mkdir(parents=True, exist_ok=True)
    settings = prepared_workspace(folder, 64, n_cases=4, samples=sample_manifests())
    from pipelines import stages
    from promptseg.evaluation.heldout import evaluate
    from promptseg.evaluation.report import eval_spec
    from promptseg.nets.checkpoint import load_model
    from storage.task_store import TaskStore

    store = TaskStore.open(settings.store, settings.resolution)
    options = {"size": args.size, "seed": args.seed, **_options(args.option)}
    previous, steps, seconds = args.init, args.start_step, args.start_seconds
    try:
        for chunk in range(args.chunks):
            start = time.perf_counter()
            trained = stages.train(
                settings,
                steps=args.chunk_steps,
                run_name=f"curve-{steps + args.chunk_steps}",
                register=False,
                evaluate=False,
                init_weights=str(previous) if previous else "",
                **options,
            )
            seconds += time.perf_counter() - start
            steps += args.chunk_steps
            previous = out / f"step{steps}"
            shutil.rmtree(previous, ignore_errors=True)
            shutil.copytree(trained.checkpoint_dir, previous)
            spec = eval_spec("quick", settings.training.splits, "validation", n_prompts=args.n_prompts)
            report = evaluate(load_model(previous), store, spec, folder / "reports" / f"chunk{chunk}").report
            dice = {
                method: {n: round(cell["dice"].mean, 4) for n, cell in report.summary[method].items()}
                for method in (report.primary, "prior_rule", "most_similar_prompt")
            }
            gain = {
                n: [round(g.mean, 4), round(g.ci_low, 4), round(g.ci_high, 4)]
                for n, g in report.learned_contribution.items()
            }
            row = {"bench": "learning_curve", "options": options, "chunk": chunk, "steps": steps}
            row |= {"train_s": round(seconds, 1), "tasks": len(report.tasks), "dice": dice}
            row |= {"learned_contribution": gain, "checkpoint": str(previous)}
            print(json.dumps(row), flush=True)
    finally:
        stages.stop_serving(settings)


if __name__ == "__main__":
    main()
