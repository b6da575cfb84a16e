"""How an evaluation scores: one method on one episode, and the cells of its tables.

- `score_episode`: Dice, IoU and HD95 (mm) averaged over the queries that show the structure; over the empty
  queries the false-positive rate; Dice over all queries with the empty/empty convention (metrics.dice_score: two
  empty masks score 1).
- `over_resamples`: a table cell. Each task's score is its mean over prompt resamples; the cell is the mean over
  tasks with a 95 % bootstrap confidence interval over tasks (tasks drawn with replacement), and the typical sd over
  resamples (root mean square over tasks) reported beside it, never as the interval.
- `paired_difference`: method A minus method B, paired per task (same episodes), with the same kind of interval.
"""

from __future__ import annotations

import math

import numpy as np

from promptseg.evaluation.metrics import segmentation_metrics, summarize
from promptseg.evaluation.report import EpisodeScore, Stat

CONFIDENCE = 0.95


def score_episode(
    probabilities: np.ndarray, truths: np.ndarray, spacing: list[float | None], threshold: float = 0.5
) -> dict:
    """The metric fields of an `EpisodeScore` for foreground probabilities and reference masks (Q, R, R) with each
    query's pixel size in mm; a query whose reference is empty counts as an empty query."""
    predicted = probabilities > threshold
    shows = truths.reshape(len(truths), -1).any(axis=1)
    scored = [segmentation_metrics(p, t, mm) for p, t, mm in zip(predicted, truths, spacing, strict=True)]
    positive = [q for q, s in zip(scored, shows, strict=True) if s]
    empty_hits = [bool(p.any()) for p, s in zip(predicted, shows, strict=True) if not s]
    return {
        **{m: summarize([q[m] for q in positive])["mean"] for m in ("dice", "iou", "hd95")},
        "per_query_dice": [q["dice"] for q in positive],
        "empty_queries": len(empty_hits),
        "fp_rate": float(np.mean(empty_hits)) if empty_hits else math.nan,
        "dice_with_empty": float(np.mean([q["dice"] for q in scored])),
    }


def _per_task(rows: list[EpisodeScore], metric: str) -> dict[str, dict]:
    by_task: dict[str, list[float]] = {}
    for row in rows:
        by_task.setdefault(row.task, []).append(getattr(row, metric))
    return {task: stats for task, values in by_task.items() if (stats := summarize(values))["count"]}


def _bootstrap(values: np.ndarray, draws: int, seed: int) -> tuple[float, float]:
    """The percentile interval of the mean of `values` over `draws` resamples with replacement."""
    if len(values) < 2 or draws < 1:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    means = values[rng.integers(len(values), size=(draws, len(values)))].mean(axis=1)
    tail = (1 - CONFIDENCE) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return float(low), float(high)


def over_resamples(rows: list[EpisodeScore], metric: str, draws: int = 1000, seed: int = 0) -> Stat:
    """A table cell from the rows of one method (and N), as the module docstring says."""
    stats = _per_task(rows, metric)
    if not stats:
        return Stat(mean=math.nan, sd=math.nan, count=0, tasks=0)
    means = np.array([s["mean"] for s in stats.values()])
    low, high = _bootstrap(means, draws, seed)
    return Stat(
        mean=float(means.mean()),
        sd=float(np.sqrt(np.mean([s["sd"] ** 2 for s in stats.values()]))),
        count=int(sum(s["count"] for s in stats.values())),
        tasks=len(stats),
        ci_low=low,
        ci_high=high,
    )


def paired_difference(
    rows: list[EpisodeScore], method: str, reference: str, metric: str = "dice", draws: int = 1000, seed: int = 0
) -> Stat:
    """`method` minus `reference` on the tasks both were scored on: the mean over tasks of the per-task difference of
    their means over resamples, with a bootstrap interval over tasks."""
    ours = _per_task([r for r in rows if r.method == method], metric)
    theirs = _per_task([r for r in rows if r.method == reference], metric)
    shared = sorted(set(ours) & set(theirs))
    if not shared:
        return Stat(mean=math.nan, sd=math.nan, count=0, tasks=0)
    differences = np.array([ours[t]["mean"] - theirs[t]["mean"] for t in shared])
    low, high = _bootstrap(differences, draws, seed)
    return Stat(
        mean=float(differences.mean()),
        sd=float(differences.std()),
        count=len(shared),
        tasks=len(shared),
        ci_low=low,
        ci_high=high,
    )
