"""Held-out evaluation: a trained network beside every baseline, its ablation and the prompt-use controls, on the
tasks of one split (storage.splits: `validation` for every design choice and the promotion gate, `test` only to
report).

Two profiles (`report.eval_spec`): `quick` (after every training) and `full` (on demand: N up to 32, ensembles,
the UniverSeg-style network and the supervised reference). For each task of the split, each N and each resample,
`episodes.draw_episode` picks the prompts, the queries (with and without the structure) and the controls' prompts;
a prompt count a task cannot supply is recorded as skipped. Methods, all on the same episodes:

- the evaluated network (`<network>_ensemble<K>` for ensembles) and any other in-context networks given (e.g. the
  UniverSeg-style baseline), each through the `Predictor`;
- `<network>_tokens_zeroed` (PromptSeg only): the same network with its ViT and Transformer features replaced by
  zeros before the head, so only its priors reach the output (what the learned token path adds);
- `prior_rule` (no learning: the network's intensity and location priors as naive Bayes), `mean_prompt_mask`
  and `most_similar_prompt`;
- `<network>+<control>` and `prior_rule+<control>` for the controls of `episodes` (a model that reads its
  prompts falls towards zero on them); the controls and the token-path ablation run at the largest N in `quick`
  and at every N in `full`;
- `supervised_unet` (full profile): a UNet trained on the task's slices of the other cases than the queries', or,
  in a single-volume task, on the other half of the volume at least `min_gap` slices away (supervised_cache): a
  supervised reference, not an upper bound.

Scores (`scoring`): Dice, IoU and HD95 in mm on queries showing the structure, the false-positive rate on the
others, Dice on all with the empty/empty convention; cells are means over tasks with 95 % bootstrap intervals over
tasks; `learned_contribution` is the network minus the prior rule per N, paired per task. Writes results.json (the
`report.EvaluationReport`), results.md, a Dice-vs-N plot and overlays of the network's best, median and worst
queries at the largest N (`report_files`), and returns the `report.Evaluation`. Each finished task is kept on
disk until the report is written (`task_shards`), so an interrupted evaluation continues where it stopped.
"""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import numpy as np
from rich.progress import track
from torch import nn

from promptseg.evaluation.baselines import mean_prompt_mask, most_similar_prompt_mask, prior_rule
from promptseg.evaluation.episodes import EvalEpisode, control_pool, draw_episode
from promptseg.evaluation.report import Breakdowns, EpisodeScore, EvalSpec, Evaluation, EvaluationReport, SkippedCell
from promptseg.evaluation.report_files import best_median_worst_overlays, dice_vs_n_plot, markdown
from promptseg.evaluation.scoring import over_resamples, paired_difference, score_episode
from promptseg.evaluation.supervised_cache import SupervisedReferences
from promptseg.evaluation.task_shards import TaskResult, TaskShards, results_key
from promptseg.inference.predictor import MODEL_GRID, Predictor
from promptseg.nets.model import tokens_zeroed
from storage.sampler import split_tasks
from storage.splits import Splits
from storage.task_store import Task, TaskStore

METRICS = ("dice", "iou", "hd95", "fp_rate", "dice_with_empty")
ENSEMBLE = "_ensemble"
TOKENS_ZEROED = "_tokens_zeroed"
PRIOR_RULE = "prior_rule"


def _run(predictor: Predictor, prompt_images: np.ndarray, prompt_masks: np.ndarray, queries: list) -> np.ndarray:
    task = predictor.encode_task(list(prompt_images[:, 0].astype(np.float32)), list(prompt_masks[:, 0]), MODEL_GRID)
    return np.stack([s.probability for s in predictor.segment(task, queries, MODEL_GRID)])


def _rule(prompt_images: np.ndarray, prompt_masks: np.ndarray, queries: np.ndarray) -> np.ndarray:
    return prior_rule(prompt_images.astype(np.float32), prompt_masks, queries)[:, 0]


def _episode_predictions(
    predictors: dict[str, Predictor], ablations: dict[str, Predictor], drawn: EvalEpisode, primary: str
) -> dict[str, np.ndarray]:
    """Foreground probabilities (Q, R, R) of every method on one episode, and, when the episode carries the controls,
    of the ablations and the controls."""
    episode = drawn.episode
    queries = list(episode.query_images[:, 0].astype(np.float32))
    query_array = episode.query_images.astype(np.float32)
    running = predictors | (ablations if drawn.controls else {})
    out = {name: _run(p, episode.prompt_images, episode.prompt_masks, queries) for name, p in running.items()}
    out[PRIOR_RULE] = _rule(episode.prompt_images, episode.prompt_masks, query_array)
    out["mean_prompt_mask"] = mean_prompt_mask(episode.prompt_masks, len(queries))[:, 0]
    out["most_similar_prompt"] = most_similar_prompt_mask(
        episode.prompt_images.astype(np.float32), episode.prompt_masks, query_array
    )[:, 0]
    for control, (images, masks) in drawn.controls.items():
        out[f"{primary}+{control}"] = _run(predictors[primary], images, masks, queries)
        out[f"{PRIOR_RULE}+{control}"] = _rule(images, masks, query_array)
    return out


def _predictors(network: nn.Module, spec: EvalSpec, baselines: dict[str, nn.Module] | None) -> dict[str, Predictor]:
    primary = network.config.architecture
    predictors = {
        primary + (f"{ENSEMBLE}{k}" if k > 1 else ""): Predictor(network, ensemble=k, seed=spec.seed)
        for k in spec.ensembles
    }
    return predictors | {name: Predictor(net, seed=spec.seed) for name, net in (baselines or {}).items()}


def _ablations(network: nn.Module, spec: EvalSpec) -> dict[str, Predictor]:
    """The token-path ablation (PromptSeg only), run where the controls are."""
    primary = network.config.architecture
    if primary != "promptseg":
        return {}
    return {primary + TOKENS_ZEROED: Predictor(tokens_zeroed(network), seed=spec.seed)}


def evaluate(
    network: nn.Module,
    store: TaskStore,
    spec: EvalSpec,
    out_dir: Path,
    baselines: dict[str, nn.Module] | None = None,
    supervised_cache: Path | None = None,
) -> Evaluation:
    """Evaluate on the tasks of `spec.split` in `store`; return the report (also written to `out_dir`)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "overlays").mkdir(exist_ok=True)
    splits = Splits.from_dict(spec.splits)
    usable, _ = split_tasks(store.tasks(), [], store.resolution)
    tasks = [t for t in usable if splits.split_of(t) == spec.split and (not spec.axes or t.axis in spec.axes)]
    if not tasks:
        raise ValueError(f"no {spec.split} tasks match {spec.held_out} in {store.url}")
    candidates = [t for t in usable if spec.split == "test" or splits.split_of(t) != "test"]  # control prompts
    modality = {dataset: str(store.version_info(dataset).get("modality", "")) for dataset in store.datasets()}
    primary = network.config.architecture
    predictors, ablations = _predictors(network, spec, baselines), _ablations(network, spec)
    supervised = (
        SupervisedReferences(store, spec.supervised_steps, spec.seed, supervised_cache, spec.min_gap)
        if spec.supervised_steps
        else None
    )
    pixel_mm = {
        key: size for dataset in {t.dataset for t in tasks} for key, size in store.grid_spacing_mm(dataset).items()
    }
    snapshot = store.snapshot_id()
    shards = TaskShards(out_dir, results_key(spec, snapshot, {primary: network, **(baselines or {})}))
    rows: list[EpisodeScore] = []
    skipped: list[SkippedCell] = []
    shown: list[tuple] = []
    for task in track(tasks, description=f"evaluating {spec.split} tasks"):
        result = shards.load(task.task_id)
        if result is None:
            others = control_pool(task, candidates, modality)
            result = _evaluate_task(task, store, spec, primary, predictors, ablations, others, supervised, pixel_mm)
            shards.save(task.task_id, result)
        rows += result.rows
        skipped += result.skipped
        shown += result.shown
    report = _report(spec, primary, tasks, rows, skipped, shown, out_dir, supervised.trained if supervised else 0)
    (out_dir / "results.json").write_text(json.dumps(report.model_dump(), indent=2))
    (out_dir / "results.md").write_text(markdown(report), encoding="utf-8")
    dice_vs_n_plot(report, out_dir / "dice_vs_n.png")
    shards.finish()
    return Evaluation(report=report, report_dir=out_dir, store_snapshot_id=snapshot)


def _evaluate_task(
    task: Task,
    store: TaskStore,
    spec: EvalSpec,
    primary: str,
    predictors: dict[str, Predictor],
    ablations: dict[str, Predictor],
    others: list[Task],
    supervised: SupervisedReferences | None,
    pixel_mm: dict,
) -> TaskResult:
    """Every episode of one task (each N, each resample), scored for every method (`primary`: the network's)."""
    largest = max(spec.n_prompts)
    result = TaskResult([], [], [])
    for n in spec.n_prompts:
        for resample in range(spec.resamples):
            rng = np.random.default_rng([spec.seed, zlib.crc32(task.task_id.encode()), n, resample])
            with_controls = spec.controls_at_every_n or n == largest
            drawn = draw_episode(
                store, task, n, spec.queries, spec.empty_queries, rng, spec.min_gap, others, with_controls
            )
            if drawn is None:
                result.skipped.append(SkippedCell(task=task.task_id, n_prompts=n, reason="not enough slices"))
                break
            probabilities = _episode_predictions(predictors, ablations, drawn, primary)
            query_cases = tuple(sorted({ref.case for ref in drawn.query_refs}))
            if supervised is not None:
                queries = drawn.episode.query_images.astype(np.float32)
                fitted = supervised.predict(task, drawn.query_refs, queries)
                if fitted is not None:
                    probabilities["supervised_unet"] = fitted[:, 0]
            spacing = [pixel_mm.get((ref.case, task.axis)) for ref in drawn.query_refs]
            truths = drawn.episode.query_masks[:, 0]
            for method, probs in probabilities.items():
                scores = score_episode(probs, truths, spacing)
                result.rows.append(_row(task, n, resample, method, query_cases, scores))
                if method == primary and n == largest:
                    result.shown += _shown(task, drawn, probs, scores["per_query_dice"])
    return result


def _row(task: Task, n: int, resample: int, method: str, query_cases: tuple[str, ...], scores: dict) -> EpisodeScore:
    return EpisodeScore(
        task=task.task_id,
        label=task.label_name,
        dataset=task.dataset,
        center=task.center,
        n_prompts=n,
        resample=resample,
        method=method,
        query_cases=list(query_cases),
        **scores,
    )


def _shown(task: Task, drawn: EvalEpisode, probabilities: np.ndarray, dice: list[float]) -> list[tuple]:
    """(Dice, task, image, reference, prediction) of the episode's queries that show the structure."""
    episode = drawn.episode
    positive = [i for i, mask in enumerate(episode.query_masks[:, 0]) if mask.any()]
    return [
        (score, task.task_id, episode.query_images[i, 0], episode.query_masks[i, 0], probabilities[i] > 0.5)
        for score, i in zip(dice, positive, strict=True)
    ]


def _report(
    spec: EvalSpec,
    primary: str,
    tasks: list[Task],
    rows: list[EpisodeScore],
    skipped: list[SkippedCell],
    shown: list[tuple],
    out_dir: Path,
    supervised_trained: int,
) -> EvaluationReport:
    """The tables of the report from its rows."""
    methods = list(dict.fromkeys(r.method for r in rows))
    draws, seed = spec.bootstrap, spec.seed
    summary = {
        method: {
            str(n): {m: over_resamples(cell, m, draws, seed) for m in METRICS}
            for n in spec.n_prompts
            if (cell := [r for r in rows if r.method == method and r.n_prompts == n])
        }
        for method in methods
    }
    largest = max(spec.n_prompts)
    at_largest = [r for r in rows if r.n_prompts == largest]
    breakdowns = Breakdowns(
        **{
            group: {
                value: {
                    method: over_resamples(cell, "dice", draws, seed)
                    for method in methods
                    if (cell := [r for r in at_largest if getattr(r, group) == value and r.method == method])
                }
                for value in dict.fromkeys(getattr(r, group) for r in at_largest)
            }
            for group in Breakdowns.model_fields
        }
    )
    contribution = {
        str(n): paired_difference([r for r in rows if r.n_prompts == n], primary, PRIOR_RULE, "dice", draws, seed)
        for n in spec.n_prompts
    }
    return EvaluationReport(
        spec=spec,
        primary=primary,
        summary=summary,
        dice_at_largest_n=breakdowns,
        learned_contribution=contribution,
        overlays=best_median_worst_overlays(shown, out_dir / "overlays", largest),
        skipped=skipped,
        rows=rows,
        tasks=[t.task_id for t in tasks],
        supervised_trained=supervised_trained,
    )
