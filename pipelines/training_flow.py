"""Prefect flow of the training stage: train on Ray → `quick` held-out evaluation → register as the challenger.

The same `stages.train` that `promptseg train` runs, as a flow run with its summary (run, loss, version and the
held-out Dice table) as a Markdown artifact; the nightly pipeline composes it.
"""

from __future__ import annotations

from typing import Any

from prefect import flow
from prefect.artifacts import create_markdown_artifact

from pipelines import stages
from pipelines.outcomes import TrainingOutcome
from pipelines.settings import Settings


def _summary(outcome: TrainingOutcome) -> str:
    lines = [
        f"# Training run `{outcome.run_name}`",
        "",
        f"MLflow run `{outcome.run_id}`, final loss {outcome.final_loss:.4f}, "
        f"registered version: {outcome.version or 'not registered'}",
    ]
    if outcome.evaluation:
        summary = outcome.evaluation.report.summary
        ns = sorted(next(iter(summary.values())), key=int)
        lines += ["", "| held-out Dice | " + " | ".join(f"N={n}" for n in ns) + " |", "|---|" + "---|" * len(ns)]
        for method, per_n in summary.items():
            cells = [f"{per_n[n]['dice'].mean:.3f}" if n in per_n else "skipped" for n in ns]
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


@flow(name="train")
def train_flow(
    run_name: str | None = None,
    resume: bool = False,
    register_challenger: bool = True,
    evaluate: bool = True,
    report_test: bool = True,
    options: dict[str, Any] | None = None,
) -> TrainingOutcome:
    """Train with the workspace settings (`options`: TrainConfig fields such as steps, size, num_workers); evaluate
    on validation and, with `report_test`, on test for the model card."""
    outcome = stages.train(
        Settings(),
        run_name=run_name,
        resume=resume,
        register=register_challenger,
        evaluate=evaluate,
        report_test=report_test,
        **(options or {}),
    )
    create_markdown_artifact(_summary(outcome), key="train-summary", description="Training run")
    return outcome
