"""The held-out evaluation's hand-offs: what it runs, what it found, and what the stages after it receive.

- `EvalSpec` (the `quick` and `full` profiles of `eval_spec`): what an evaluation runs; recorded with its results
  and on the model version it scores.
- `EvaluationReport`: what one evaluation found, field for field what `results.json` in its report folder holds:
  the spec; the primary method (the evaluated network's architecture); `summary`, method → N → metric → `Stat`;
  `dice_at_largest_n`, Dice per task, dataset and center at the largest N (value → method → `Stat`); the overlay
  files; the cells skipped; one `EpisodeScore` per method and episode; the held-out task ids; how many supervised
  UNets were trained.
- `Evaluation`: a report with its folder and the store snapshot it was measured on, as `heldout.evaluate` returns
  it to the stages (training outcome, `promptseg evaluate`, demo). `scores` are the headline scores (mean Dice per
  method at the largest N); `recorded()` is what the registry tags on the version it scored
  (promptseg.registry.versions.RecordedEvaluation).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, computed_field

from promptseg.registry.versions import RecordedEvaluation


@dataclass
class EvalSpec:
    """What an evaluation runs; recorded with its results and on the model version it scores."""

    held_out: list[str] = field(default_factory=lambda: ["kidney*"])
    profile: str = "quick"
    n_prompts: list[int] = field(default_factory=lambda: [1, 4, 8])
    resamples: int = 3
    queries: int = 4
    seed: int = 0
    ensembles: list[int] = field(default_factory=lambda: [1])
    min_gap: int = 3
    supervised_steps: int = 0

    def to_dict(self) -> dict[str, Any]:
        """The spec as JSON holds it (lists, never tuples), so a spec read back from a tag compares equal."""
        return json.loads(json.dumps(asdict(self)))


PROFILES: dict[str, dict] = {
    "quick": {"n_prompts": [1, 4, 8], "resamples": 3, "ensembles": [1], "supervised_steps": 0},
    "full": {"n_prompts": [1, 2, 4, 8, 16, 32, 64], "resamples": 5, "ensembles": [1, 5], "supervised_steps": 400},
}


def eval_spec(profile: str, held_out: list[str], **overrides: object) -> EvalSpec:
    """The spec of a named profile, with explicit overrides (None values are ignored)."""
    if profile not in PROFILES:
        raise ValueError(f"unknown evaluation profile {profile!r}; choose one of {sorted(PROFILES)}")
    chosen = {k: v for k, v in overrides.items() if v is not None}
    return EvalSpec(held_out=list(held_out), profile=profile, **{**PROFILES[profile], **chosen})


class Stat(BaseModel):
    """One cell: the mean over tasks of each task's mean over prompt resamples, the typical sd over resamples (root
    mean square over tasks), how many finite resample scores and how many tasks went into it."""

    model_config = ConfigDict(frozen=True)

    mean: float
    sd: float
    count: int
    tasks: int


class EpisodeScore(BaseModel):
    """One method on one episode (task, N prompts, resample): the mean of each metric over its queries, and every
    query's Dice."""

    model_config = ConfigDict(frozen=True)

    task: str
    dataset: str
    center: str
    n_prompts: int
    resample: int
    method: str
    query_cases: list[str]
    dice: float
    iou: float
    hd95: float
    per_query_dice: list[float]


class SkippedCell(BaseModel):
    """A prompt count a task could not supply (its resamples are not run)."""

    model_config = ConfigDict(frozen=True)

    task: str
    n_prompts: int
    reason: str


class Breakdowns(BaseModel):
    """Dice at the largest N per task, dataset and center: value → method → `Stat`."""

    model_config = ConfigDict(frozen=True)

    task: dict[str, dict[str, Stat]]
    dataset: dict[str, dict[str, Stat]]
    center: dict[str, dict[str, Stat]]


class EvaluationReport(BaseModel):
    """What one held-out evaluation found (the module docstring lists the fields)."""

    model_config = ConfigDict(frozen=True)

    spec: EvalSpec
    primary: str
    summary: dict[str, dict[str, dict[str, Stat]]]
    dice_at_largest_n: Breakdowns
    overlays: dict[str, str]
    skipped: list[SkippedCell]
    rows: list[EpisodeScore]
    tasks: list[str]
    supervised_trained: int

    def headline_scores(self) -> dict[str, float]:
        """Mean Dice per method at the largest N it was evaluated at, as `dice_<method>_n<N>`."""
        return {
            f"dice_{method}_n{n}": per_n[n]["dice"].mean
            for method, per_n in self.summary.items()
            for n in [max(per_n, key=int, default=None)]
            if n is not None
        }


class Evaluation(BaseModel):
    """A report, the folder it was written to and the store snapshot it was measured on."""

    model_config = ConfigDict(frozen=True)

    report: EvaluationReport
    report_dir: Path
    store_snapshot_id: str

    @computed_field
    @property
    def scores(self) -> dict[str, float]:
        """The headline scores (mean Dice per method at the largest N), tagged on the version it scored."""
        return self.report.headline_scores()

    def recorded(self) -> RecordedEvaluation:
        """What the registry tags on the version this evaluation scored."""
        return RecordedEvaluation(
            scores=self.scores,
            spec=self.report.spec.to_dict(),
            store_snapshot_id=self.store_snapshot_id,
            primary=self.report.primary,
        )
