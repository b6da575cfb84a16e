"""The held-out evaluation's hand-offs: what it runs, what it found, and what the stages after it receive.

- `EvalSpec` (the `quick` and `full` profiles of `eval_spec`): what an evaluation runs; recorded with its results
  and on the model version it scores.
- `EvaluationReport`: what one evaluation found, field for field what `results.json` in its report folder holds:
  the spec (with its split); the primary method (the evaluated network's architecture); `summary`, method → N →
  metric → `Stat`; `dice_at_largest_n`, Dice per task, structure, dataset and center at the largest N (value →
  method → `Stat`); `learned_contribution`, N → the network's Dice minus the prior rule's, paired per task; the overlay
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
from storage.splits import Splits


@dataclass
class EvalSpec:
    """What an evaluation runs; recorded with its results and on the model version it scores.

    `splits` are the validation and test patterns (storage.splits) and `split` the one evaluated. Each episode has
    `queries` slices showing the structure and up to `empty_queries` slices of the query cases without it. The
    prompt-use controls and the token-path ablation run at the largest N only, unless `controls_at_every_n`."""

    splits: dict[str, list[str]] = field(default_factory=lambda: Splits().to_dict())
    split: str = "validation"
    profile: str = "quick"
    n_prompts: list[int] = field(default_factory=lambda: [1, 4, 8])
    resamples: int = 3
    queries: int = 4
    empty_queries: int = 2
    seed: int = 0
    ensembles: list[int] = field(default_factory=lambda: [1])
    min_gap: int = 3
    supervised_steps: int = 0
    bootstrap: int = 1000
    axes: list[int] | None = None  # only the tasks along these slicing axes (None: every axis)
    controls_at_every_n: bool = False  # the controls and the ablation at every N, or at the largest only

    @property
    def held_out(self) -> list[str]:
        """The patterns of the evaluated split."""
        return list(self.splits[self.split])

    def to_dict(self) -> dict[str, Any]:
        """The spec as JSON holds it (lists, never tuples), so a spec read back from a tag compares equal."""
        return json.loads(json.dumps(asdict(self)))


PROFILES: dict[str, dict] = {
    "quick": {"n_prompts": [1, 4, 8], "resamples": 1, "queries": 3, "ensembles": [1], "supervised_steps": 0},
    "full": {
        "n_prompts": [1, 2, 4, 8, 16, 32],
        "resamples": 5,
        "queries": 4,
        "ensembles": [1, 5],
        "supervised_steps": 2000,
        "controls_at_every_n": True,
    },
}


def eval_spec(profile: str, splits: Splits, split: str = "validation", **overrides: object) -> EvalSpec:
    """The spec of a named profile on one split, with explicit overrides (None values are ignored)."""
    if profile not in PROFILES:
        raise ValueError(f"unknown evaluation profile {profile!r}; choose one of {sorted(PROFILES)}")
    if split not in ("validation", "test"):
        raise ValueError(f"evaluations run on the validation or the test split, not {split!r}")
    chosen = {k: v for k, v in overrides.items() if v is not None}
    return EvalSpec(splits=splits.to_dict(), split=split, profile=profile, **{**PROFILES[profile], **chosen})


class Stat(BaseModel):
    """One cell: the mean over tasks of each task's mean over prompt resamples, its 95 % bootstrap confidence
    interval over tasks (`ci_low`, `ci_high`), the typical sd over resamples (root mean square over tasks), how many
    finite resample scores and how many tasks went into it."""

    model_config = ConfigDict(frozen=True)

    mean: float
    sd: float
    count: int
    tasks: int
    ci_low: float = float("nan")
    ci_high: float = float("nan")


class EpisodeScore(BaseModel):
    """One method on one episode (task, N prompts, resample): the mean of Dice, IoU and HD95 (mm) over its queries
    showing the structure, every such query's Dice; over its `empty_queries` (slices without the structure) the
    false-positive rate (share with any predicted pixel; nan without empty queries); and Dice over all its queries
    with the empty/empty convention (an empty query scores 1 when the prediction is empty too, else 0)."""

    model_config = ConfigDict(frozen=True)

    task: str
    label: str
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
    empty_queries: int
    fp_rate: float
    dice_with_empty: float


class SkippedCell(BaseModel):
    """A prompt count a task could not supply (its resamples are not run)."""

    model_config = ConfigDict(frozen=True)

    task: str
    n_prompts: int
    reason: str


class Breakdowns(BaseModel):
    """Dice at the largest N per task, structure (label), dataset and center: value → method → `Stat`."""

    model_config = ConfigDict(frozen=True)

    task: dict[str, dict[str, Stat]]
    label: dict[str, dict[str, Stat]]
    dataset: dict[str, dict[str, Stat]]
    center: dict[str, dict[str, Stat]]


class EvaluationReport(BaseModel):
    """What one held-out evaluation found (the module docstring lists the fields)."""

    model_config = ConfigDict(frozen=True)

    spec: EvalSpec
    primary: str
    summary: dict[str, dict[str, dict[str, Stat]]]
    dice_at_largest_n: Breakdowns
    learned_contribution: dict[str, Stat]
    overlays: dict[str, str]
    skipped: list[SkippedCell]
    rows: list[EpisodeScore]
    tasks: list[str]
    supervised_trained: int

    def headline_scores(self) -> dict[str, float]:
        """Mean Dice per method at the largest N it was evaluated at, as `dice_<method>_n<N>`; a control
        `<method>+<control>` is named `<method>_with_<control>` (MLflow keys allow no `+`)."""
        return {
            f"dice_{method.replace('+', '_with_')}_n{n}": per_n[n]["dice"].mean
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
