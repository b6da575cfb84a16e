"""Held-out evaluation: PromptSeg against the mean-prompt-mask baseline on tasks never seen in training.

For each held-out task (label names matching the held-out spec), each prompt count N and each resample, prompts
and queries are chosen by `storage.sampler.choose_prompts_and_queries` (queries from other cases than the
prompts', or far enough away in a single-case dataset). A prompt count a task cannot supply is recorded as
skipped, never filled with query slices. Writes results.json, results.md, a Dice-vs-N plot and overlay PNGs.
"""

from __future__ import annotations

import json
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch
from rich.progress import track

from promptseg.baselines import mean_prompt_mask
from promptseg.metrics import dice_score
from promptseg.model import PromptSeg
from storage.sampler import choose_prompts_and_queries, read_episode, split_tasks
from storage.task_store import TaskStore

METHODS = ("promptseg", "mean_prompt_mask")


@dataclass
class EvalSpec:
    held_out: list[str] = field(default_factory=lambda: ["kidney*"])
    n_prompts: list[int] = field(default_factory=lambda: [1, 4, 8])
    resamples: int = 3
    queries: int = 4
    seed: int = 0


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


def _dice_vs_n_plot(summary: dict, path: Path) -> None:
    figure, axis = plt.subplots(figsize=(4, 3), dpi=100)
    for method in METHODS:
        ns = sorted(int(n) for n in summary[method])
        axis.plot(ns, [summary[method][str(n)]["mean"] for n in ns], marker="o", label=method)
    axis.set_xlabel("prompts N")
    axis.set_ylabel("held-out Dice")
    axis.set_ylim(0, 1)
    axis.legend()
    figure.savefig(path, bbox_inches="tight")
    plt.close(figure)


def evaluate(network: PromptSeg, store: TaskStore, spec: EvalSpec, out_dir: Path) -> dict:
    """Evaluate on the held-out tasks of `store`; return the report (also written to `out_dir`)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "overlays").mkdir(exist_ok=True)
    _, tasks = split_tasks(store.tasks(), spec.held_out, store.resolution)
    if not tasks:
        raise ValueError(f"no held-out tasks match {spec.held_out} in {store.url}")
    rows, skipped = [], []
    network.eval()
    for task in track(tasks, description="evaluating held-out tasks"):
        for n in spec.n_prompts:
            for resample in range(spec.resamples):
                rng = np.random.default_rng([spec.seed, zlib.crc32(task.task_id.encode()), n, resample])
                chosen = choose_prompts_and_queries(task, n, spec.queries, rng)
                if chosen is None:
                    skipped.append({"task": task.task_id, "n_prompts": n, "reason": "not enough slices"})
                    break
                episode = read_episode(store, task, *chosen)
                with torch.inference_mode():
                    logits = network(
                        *(
                            torch.from_numpy(a)[None].float()
                            for a in (episode.prompt_images, episode.prompt_masks, episode.query_images)
                        )
                    )[0]
                predictions = {
                    "promptseg": (logits > 0).numpy(),
                    "mean_prompt_mask": mean_prompt_mask(episode.prompt_masks, spec.queries) > 0.5,
                }
                for q in range(spec.queries):
                    row = {
                        "task": task.task_id,
                        "dataset": task.dataset,
                        "n_prompts": n,
                        "resample": resample,
                        "query": q,
                    }
                    for method, prediction in predictions.items():
                        row[method] = dice_score(prediction[q, 0], episode.query_masks[q, 0])
                    rows.append(row)
                if resample == 0 and n == max(spec.n_prompts):
                    overlay_png(
                        episode.query_images[0, 0],
                        episode.query_masks[0, 0],
                        predictions["promptseg"][0, 0],
                        out_dir / "overlays" / f"{task.task_id.replace('/', '_')}_n{n}.png",
                        f"{task.task_id} N={n} Dice={rows[-spec.queries]['promptseg']:.2f}",
                    )
    summary = {
        method: {
            str(n): {"mean": float(np.mean(v)), "sd": float(np.std(v)), "count": len(v)}
            for n in spec.n_prompts
            if (v := [r[method] for r in rows if r["n_prompts"] == n])
        }
        for method in METHODS
    }
    report = {
        "spec": asdict(spec),
        "summary": summary,
        "skipped": skipped,
        "rows": rows,
        "tasks": [t.task_id for t in tasks],
    }
    (out_dir / "results.json").write_text(json.dumps(report, indent=2))
    lines = [
        "| method | " + " | ".join(f"N={n}" for n in spec.n_prompts) + " |",
        "|---|" + "---|" * len(spec.n_prompts),
    ]
    for method in METHODS:
        cells = [
            f"{summary[method][str(n)]['mean']:.3f} ± {summary[method][str(n)]['sd']:.3f}"
            if str(n) in summary[method]
            else "skipped"
            for n in spec.n_prompts
        ]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    (out_dir / "results.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    _dice_vs_n_plot(summary, out_dir / "dice_vs_n.png")
    return report


def headline_scores(report: dict) -> dict[str, float]:
    """Mean Dice per method at the largest evaluated N (the scores tagged on a model version)."""
    return {
        f"dice_{method}_n{n}": report["summary"][method][n]["mean"]
        for method in METHODS
        for n in [max(report["summary"][method], key=int, default=None)]
        if n is not None
    }
