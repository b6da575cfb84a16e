"""What an evaluation writes beside results.json: results.md (every table, with the split, the conventions and the
confidence intervals), the Dice-vs-N plot, and overlay PNGs (the query, its reference contour and the prediction).
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from promptseg.evaluation.report import EvaluationReport, Stat

TABLE_METRICS = {
    "dice": "Dice on queries showing the structure",
    "dice_with_empty": "Dice on all queries (an empty query scores 1 if nothing is predicted, else 0)",
    "fp_rate": "false-positive rate on queries without the structure",
    "hd95": "HD95 in mm",
}


def overlay_png(image: np.ndarray, truth: np.ndarray | None, prediction: np.ndarray, path: Path, title: str) -> None:
    """The query (in [0, 1]) with the reference contour (green, if known) and the prediction (red)."""
    figure, axis = plt.subplots(figsize=(3, 3), dpi=100)
    axis.imshow(np.asarray(image, np.float32), cmap="gray", vmin=0, vmax=1)
    if truth is not None and truth.any():
        axis.contour(truth, levels=[0.5], colors="lime", linewidths=1)
    if prediction.any():
        axis.contour(prediction, levels=[0.5], colors="red", linewidths=1)
    axis.set_title(title, fontsize=7)
    axis.axis("off")
    figure.savefig(path, bbox_inches="tight")
    plt.close(figure)


def dice_vs_n_plot(report: EvaluationReport, path: Path) -> None:
    """Dice against N for every method except the controls, with 95 % bootstrap intervals over tasks."""
    figure, axis = plt.subplots(figsize=(6, 4), dpi=100)
    for method, per_n in report.summary.items():
        if "+" in method:  # a control: its own table, not this plot
            continue
        ns = sorted(per_n, key=int)
        means = [per_n[n]["dice"].mean for n in ns]
        errors = [[m - per_n[n]["dice"].ci_low, per_n[n]["dice"].ci_high - m] for n, m in zip(ns, means, strict=True)]
        axis.errorbar(
            [int(n) for n in ns],
            means,
            yerr=np.nan_to_num(np.array(errors).T) if errors else None,
            marker="o",
            capsize=3,
            label=method,
        )
    axis.set_xscale("log", base=2)
    axis.set_xlabel("prompts N")
    axis.set_ylabel(f"{report.spec.split} Dice (95 % CI over tasks)")
    axis.set_ylim(0, 1)
    axis.legend(fontsize=6)
    figure.savefig(path, bbox_inches="tight")
    plt.close(figure)


def best_median_worst_overlays(shown: list[tuple], folder: Path, n: int) -> dict[str, str]:
    """Overlay PNGs of the network's best, median and worst query at the largest N; returns name → file."""
    if not shown:
        return {}
    ranked = sorted(shown, key=lambda item: item[0])
    picks = {"worst": ranked[0], "median": ranked[len(ranked) // 2], "best": ranked[-1]}
    for name, (dice, task_id, image, truth, prediction) in picks.items():
        overlay_png(image, truth, prediction, folder / f"{name}.png", f"{name}: {task_id} N={n} Dice={dice:.2f}")
    return {name: f"overlays/{name}.png" for name in picks}


def _cell(stat: Stat | None) -> str:
    if stat is None or math.isnan(stat.mean):
        return "–"
    interval = "" if math.isnan(stat.ci_low) else f" [{stat.ci_low:.3f}, {stat.ci_high:.3f}]"
    return f"{stat.mean:.3f}{interval}"


def markdown(report: EvaluationReport) -> str:
    """results.md: the split and conventions, then one table per metric, the learned contribution and breakdowns."""
    spec, summary = report.spec, report.summary
    ns = [str(n) for n in spec.n_prompts]
    lines = [
        f"Split **{spec.split}** ({', '.join(spec.held_out)}), profile `{spec.profile}`, {spec.resamples} prompt "
        f"resamples, {spec.queries} queries with the structure and up to {spec.empty_queries} without it per episode;"
        f" in single-volume datasets prompts and queries are at least {spec.min_gap} slices apart. Cells: mean over "
        "tasks of each task's mean over resamples [95 % bootstrap CI over tasks]. `method+control` rows are the "
        "prompt-use controls (other structure's prompts, masks shuffled across slices, empty masks).",
        "",
    ]
    for metric, title in TABLE_METRICS.items():
        lines += [
            f"### {title}",
            "",
            "| method | " + " | ".join(f"N={n}" for n in ns) + " |",
            "|---|" + "---|" * len(ns),
        ]
        lines += [
            f"| {m} | " + " | ".join(_cell(per_n.get(n, {}).get(metric)) for n in ns) + " |"
            for m, per_n in summary.items()
        ]
        lines.append("")
    lines += [
        f"### Learned contribution: {report.primary} minus the prior rule (Dice, paired per task)",
        "",
        "| N | difference [95 % CI] | tasks |",
        "|---|---|---|",
        *[f"| {n} | {_cell(stat)} | {stat.tasks} |" for n, stat in report.learned_contribution.items()],
        "",
    ]
    methods = list(summary)
    for group, table in report.dice_at_largest_n:
        lines += [
            f"### Dice per {group} at N={max(spec.n_prompts)}",
            "",
            f"| {group} | " + " | ".join(methods) + " |",
            "|---|" + "---|" * len(methods),
        ]
        lines += [
            f"| {value or '(none)'} | " + " | ".join(_cell(row.get(m)) for m in methods) + " |"
            for value, row in table.items()
        ]
        lines.append("")
    return "\n".join(lines)
