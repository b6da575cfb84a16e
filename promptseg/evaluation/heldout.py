"""Held-out evaluation: a trained network beside every baseline, on tasks never seen in training.

Two profiles (`report.eval_spec`): `quick` (after every training, in the demo and tests) evaluates the network, the
trivial baselines and the wrong-task-prompts control at N ∈ {1, 4, 8} with 3 prompt resamples; `full` (on demand)
goes to N = 64 with and without ensembling, 5 resamples, beside the UniverSeg-style and supervised-UNet baselines.

For each held-out task (label names matching the held-out spec), each prompt count N and each resample, prompts
and queries are chosen by `storage.sampler.choose_prompts_and_queries` (queries from other cases than the
prompts', or far enough away in a single-case dataset). A prompt count a task cannot supply is recorded as
skipped, never filled with query slices. Methods, all on the same prompts and queries:

- the evaluated network (and `<network>_ensemble<K>` for each ensemble size K > 1) and any other in-context
  networks given (e.g. the UniverSeg-style baseline), each through the `Predictor`;
- `<network>_other_task_prompts`: the evaluated network given the prompts of a different held-out task (a model
  that ignores its prompts scores the same here as with the right ones);
- `mean_prompt_mask` and `most_similar_prompt` (trivial baselines);
- `supervised_unet` (optional upper bound): a UNet trained on the task's labelled slices of the other cases than
  the queries' (cached per task and query case, on disk when a cache folder is given).

Every query gets Dice, IoU and HD95 in mm (the model-grid pixel's size the store records per case and axis; in
grid pixels for a store written before it recorded them); a resample's score is the mean over its queries.
Each summary cell is the mean over tasks of the mean over resamples, ± the typical sd over resamples (root mean
square over tasks); Dice tables per task, per dataset and per center at the largest N follow. Writes
results.json (the `report.EvaluationReport`), results.md, a Dice-vs-N plot with error bars and overlay PNGs of the
network's best, median and worst queries at the largest N, and returns the `report.Evaluation`.
"""

from __future__ import annotations

import hashlib
import json
import zlib
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from rich.progress import track
from safetensors.torch import load_file, save_file
from torch import nn

from promptseg.evaluation.baselines import mean_prompt_mask, most_similar_prompt_mask
from promptseg.evaluation.metrics import segmentation_metrics, summarize
from promptseg.evaluation.report import (
    Breakdowns,
    EpisodeScore,
    EvalSpec,
    Evaluation,
    EvaluationReport,
    SkippedCell,
    Stat,
)
from promptseg.evaluation.supervised import build_supervised_unet, fit_supervised_unet, predict_supervised
from promptseg.inference.predictor import MODEL_GRID, Predictor
from storage.sampler import Episode, choose_prompts_and_queries, read_episode, split_tasks
from storage.task_store import Task, TaskStore

METRICS = ("dice", "iou", "hd95")
OTHER_TASK = "_other_task_prompts"


ENSEMBLE = "_ensemble"


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


def _dice_vs_n_plot(summary: dict[str, dict[str, dict[str, Stat]]], path: Path) -> None:
    figure, axis = plt.subplots(figsize=(5, 3.5), dpi=100)
    for method, per_n in summary.items():
        ns = sorted(per_n, key=int)
        axis.errorbar(
            [int(n) for n in ns],
            [per_n[n]["dice"].mean for n in ns],
            yerr=[per_n[n]["dice"].sd for n in ns],
            marker="o",
            capsize=3,
            label=method,
        )
    axis.set_xlabel("prompts N")
    axis.set_ylabel("held-out Dice (mean ± sd over resamples)")
    axis.set_ylim(0, 1)
    axis.legend(fontsize=6)
    figure.savefig(path, bbox_inches="tight")
    plt.close(figure)


def _other_task(tasks: list[Task], index: int) -> Task | None:
    """A different held-out task for the control, preferring another label, then another dataset."""
    task = tasks[index]
    others = [t for t in tasks if t.label_name != task.label_name] or [t for t in tasks if t.dataset != task.dataset]
    return others[index % len(others)] if others else None


class _Supervised:
    """Supervised UNets per (task, query cases), trained on the task's slices of the other cases; kept in memory
    and, with `cache_dir` (one folder per store snapshot), on disk so later evaluations reuse them."""

    def __init__(self, store: TaskStore, steps: int, seed: int, cache_dir: Path | None) -> None:
        self.store, self.steps, self.seed, self.cache_dir = store, steps, seed, cache_dir
        self._cache: dict[tuple[str, tuple[str, ...]], nn.Module | None] = {}
        self.trained = 0

    def _fit(self, task: Task, query_cases: tuple[str, ...]) -> nn.Module | None:
        refs = [s for s in task.slices if s.case not in query_cases]
        if len(task.cases) < 2 or not refs:
            return None
        key = json.dumps([task.task_id, query_cases, self.steps, self.seed])
        path = (
            self.cache_dir / f"{hashlib.sha256(key.encode()).hexdigest()[:24]}.safetensors" if self.cache_dir else None
        )
        if path is not None and path.exists():
            network = build_supervised_unet()
            network.load_state_dict(load_file(str(path)))
            return network.eval()
        images, masks = self.store.read_slices(task, refs)
        network = fit_supervised_unet(
            images[:, None].astype(np.float32), masks[:, None], steps=self.steps, seed=self.seed
        )
        self.trained += 1
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            partial = path.with_suffix(".partial")
            save_file({k: v.contiguous() for k, v in network.state_dict().items()}, str(partial))
            partial.replace(path)
        return network

    def predict(self, task: Task, query_cases: tuple[str, ...], queries: np.ndarray) -> np.ndarray | None:
        key = (task.task_id, query_cases)
        if key not in self._cache:
            self._cache[key] = self._fit(task, query_cases)
        network = self._cache[key]
        return None if network is None else predict_supervised(network, queries)


def _episode_predictions(
    predictors: dict[str, Predictor], episode: Episode, wrong_prompts: Episode | None, primary: str
) -> dict[str, np.ndarray]:
    """Foreground probabilities (Q, R, R) of every in-context method on one episode."""
    queries = list(episode.query_images[:, 0].astype(np.float32))

    def run(predictor: Predictor, source: Episode) -> np.ndarray:
        task = predictor.encode_task(
            list(source.prompt_images[:, 0].astype(np.float32)), list(source.prompt_masks[:, 0]), MODEL_GRID
        )
        return np.stack([s.probability for s in predictor.segment(task, queries, MODEL_GRID)])

    out = {name: run(predictor, episode) for name, predictor in predictors.items()}
    if wrong_prompts is not None:
        out[primary + OTHER_TASK] = run(predictors[primary], wrong_prompts)
    out["mean_prompt_mask"] = mean_prompt_mask(episode.prompt_masks, len(queries))[:, 0]
    out["most_similar_prompt"] = most_similar_prompt_mask(
        episode.prompt_images.astype(np.float32), episode.prompt_masks, episode.query_images.astype(np.float32)
    )[:, 0]
    return out


def evaluate(
    network: nn.Module,
    store: TaskStore,
    spec: EvalSpec,
    out_dir: Path,
    baselines: dict[str, nn.Module] | None = None,
    supervised_cache: Path | None = None,
) -> Evaluation:
    """Evaluate on the held-out tasks of `store`; return the report (also written to `out_dir`)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "overlays").mkdir(exist_ok=True)
    _, tasks = split_tasks(store.tasks(), spec.held_out, store.resolution)
    if not tasks:
        raise ValueError(f"no held-out tasks match {spec.held_out} in {store.url}")
    primary = network.config.architecture
    predictors = {
        primary + (f"{ENSEMBLE}{k}" if k > 1 else ""): Predictor(network, ensemble=k, seed=spec.seed)
        for k in spec.ensembles
    }
    predictors |= {name: Predictor(net, seed=spec.seed) for name, net in (baselines or {}).items()}
    supervised = (
        _Supervised(store, spec.supervised_steps, spec.seed, supervised_cache) if spec.supervised_steps else None
    )
    largest = max(spec.n_prompts)
    rows: list[EpisodeScore] = []
    skipped: list[SkippedCell] = []
    shown: list[tuple] = []
    pixel_mm = {
        key: size for dataset in {t.dataset for t in tasks} for key, size in store.grid_spacing_mm(dataset).items()
    }
    for index, task in enumerate(track(tasks, description="evaluating held-out tasks")):
        other = _other_task(tasks, index)
        for n in spec.n_prompts:
            for resample in range(spec.resamples):
                rng = np.random.default_rng([spec.seed, zlib.crc32(task.task_id.encode()), n, resample])
                chosen = choose_prompts_and_queries(task, n, spec.queries, rng, spec.min_gap)
                if chosen is None:
                    skipped.append(SkippedCell(task=task.task_id, n_prompts=n, reason="not enough slices"))
                    break
                episode = read_episode(store, task, *chosen)
                wrong = other and choose_prompts_and_queries(other, n, 1, rng, spec.min_gap)
                wrong_episode = read_episode(store, other, *wrong) if wrong else None
                probabilities = _episode_predictions(predictors, episode, wrong_episode, primary)
                query_cases = tuple(sorted({ref.case for ref in chosen[1]}))
                if supervised is not None:
                    fitted = supervised.predict(task, query_cases, episode.query_images.astype(np.float32))
                    if fitted is not None:
                        probabilities["supervised_unet"] = fitted[:, 0]
                spacing = [pixel_mm.get((ref.case, task.axis)) for ref in chosen[1]]
                for method, probs in probabilities.items():
                    masks = zip(probs, episode.query_masks[:, 0], spacing, strict=True)
                    per_query = [segmentation_metrics(p > 0.5, t, mm) for p, t, mm in masks]
                    rows.append(
                        EpisodeScore(
                            task=task.task_id,
                            dataset=task.dataset,
                            center=task.center,
                            n_prompts=n,
                            resample=resample,
                            method=method,
                            query_cases=list(query_cases),
                            **{m: summarize([q[m] for q in per_query])["mean"] for m in METRICS},
                            per_query_dice=[q["dice"] for q in per_query],
                        )
                    )
                    if method == primary and n == largest:
                        shown += [
                            (q["dice"], task.task_id, image, truth, prob > 0.5)
                            for q, image, truth, prob in zip(
                                per_query, episode.query_images[:, 0], episode.query_masks[:, 0], probs, strict=True
                            )
                        ]
    methods = list(dict.fromkeys(r.method for r in rows))
    summary = {
        method: {
            str(n): {m: _over_resamples(cell, m) for m in METRICS}
            for n in spec.n_prompts
            if (cell := [r for r in rows if r.method == method and r.n_prompts == n])
        }
        for method in methods
    }
    at_largest = [r for r in rows if r.n_prompts == largest]
    breakdowns = Breakdowns(
        **{
            group: {
                value: {
                    method: _over_resamples(cell, "dice")
                    for method in methods
                    if (cell := [r for r in at_largest if getattr(r, group) == value and r.method == method])
                }
                for value in dict.fromkeys(getattr(r, group) for r in at_largest)
            }
            for group in Breakdowns.model_fields
        }
    )
    report = EvaluationReport(
        spec=spec,
        primary=primary,
        summary=summary,
        dice_at_largest_n=breakdowns,
        overlays=_best_median_worst_overlays(shown, out_dir / "overlays", largest),
        skipped=skipped,
        rows=rows,
        tasks=[t.task_id for t in tasks],
        supervised_trained=supervised.trained if supervised else 0,
    )
    (out_dir / "results.json").write_text(json.dumps(report.model_dump(), indent=2))
    (out_dir / "results.md").write_text(_markdown(report), encoding="utf-8")
    _dice_vs_n_plot(summary, out_dir / "dice_vs_n.png")
    return Evaluation(report=report, report_dir=out_dir, store_snapshot_id=store.snapshot_id())


def _best_median_worst_overlays(shown: list[tuple], folder: Path, n: int) -> dict[str, str]:
    """Overlay PNGs of the network's best, median and worst query at the largest N; returns name → file."""
    if not shown:
        return {}
    ranked = sorted(shown, key=lambda item: item[0])
    picks = {"worst": ranked[0], "median": ranked[len(ranked) // 2], "best": ranked[-1]}
    for name, (dice, task_id, image, truth, prediction) in picks.items():
        overlay_png(image, truth, prediction, folder / f"{name}.png", f"{name}: {task_id} N={n} Dice={dice:.2f}")
    return {name: f"overlays/{name}.png" for name in picks}


def _over_resamples(rows: list[EpisodeScore], metric: str) -> Stat:
    """Mean over tasks of each task's mean over prompt resamples; sd is the root mean square over tasks of each
    task's sd over resamples (the spread that re-drawing the prompts causes, not the spread between tasks)."""
    by_task: dict[str, list[float]] = {}
    for row in rows:
        by_task.setdefault(row.task, []).append(getattr(row, metric))
    stats = [s for s in (summarize(values) for values in by_task.values()) if s["count"]]
    if not stats:
        return Stat(mean=float("nan"), sd=float("nan"), count=0, tasks=0)
    return Stat(
        mean=float(np.mean([s["mean"] for s in stats])),
        sd=float(np.sqrt(np.mean([s["sd"] ** 2 for s in stats]))),
        count=int(sum(s["count"] for s in stats)),
        tasks=len(stats),
    )


def _markdown(report: EvaluationReport) -> str:
    spec, summary = report.spec, report.summary
    lines = [f"Profile `{spec.profile}`, held out {spec.held_out}, {spec.resamples} prompt resamples.", ""]
    for metric in METRICS:
        lines += [
            f"### {metric} (mean ± sd over prompt resamples)",
            "",
            "| method | " + " | ".join(f"N={n}" for n in spec.n_prompts) + " |",
            "|---|" + "---|" * len(spec.n_prompts),
        ]
        for method, per_n in summary.items():
            cells = [
                f"{per_n[str(n)][metric].mean:.3f} ± {per_n[str(n)][metric].sd:.3f}" if str(n) in per_n else "skipped"
                for n in spec.n_prompts
            ]
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
        lines.append("")
    methods = list(summary)
    for group, table in report.dice_at_largest_n:
        lines += [
            f"### Dice per {group} at N={max(spec.n_prompts)} (mean ± sd over prompt resamples)",
            "",
            f"| {group} | " + " | ".join(methods) + " |",
            "|---|" + "---|" * len(methods),
        ]
        for value, per_method in table.items():
            cells = [f"{per_method[m].mean:.3f} ± {per_method[m].sd:.3f}" if m in per_method else "–" for m in methods]
            lines.append(f"| {value or '(none)'} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)
