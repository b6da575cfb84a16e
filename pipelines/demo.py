"""`promptseg demo`: every stage end to end on the embedded defaults, then validation tasks queried over HTTP.

Synthetic multi-center datasets plus the six real datasets of data/samples go through the nightly pipeline once (the
same flow operators schedule: ingest → preprocess → train the tiny model on Ray with 2 workers on the training split,
quick evaluation on the validation split, registration as challenger → promotion gate → start the endpoint →
retention), then validation structures are queried
over HTTP, prompts and queries from different cases. Prints Dice of the
model and of the mean-prompt-mask baseline, where the overlays, the MLflow UI and the Ray dashboard are and how
to query by hand. The endpoint keeps
running until `promptseg serve stop`.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from PIL import Image
from rich.console import Console
from rich.table import Table

from pipelines import stages
from pipelines.nightly import NightlyConfig, NightlyReport, nightly
from pipelines.querying import query_files
from pipelines.settings import Settings
from promptseg.evaluation.baselines import mean_prompt_mask
from promptseg.evaluation.metrics import dice_score
from promptseg.serving.api_models import SegmentRequest
from promptseg.serving.client import PromptSegClient
from storage.sampler import choose_prompts_and_queries, read_episode
from storage.synthetic import write_synthetic_datasets
from storage.task_store import Task, TaskStore

SAMPLES = Path(__file__).resolve().parents[1] / "data" / "samples"
DEMO_PROMPTS = 4
DEMO_QUERIES = 4


def sample_manifests() -> list[Path]:
    """The manifests of the real datasets embedded in data/samples (each its own dataset and center)."""
    return sorted(SAMPLES.glob("*/manifest.yaml"))


def _png(path: Path, array: np.ndarray) -> Path:
    Image.fromarray(np.clip(array * 255.0, 0, 255).round().astype(np.uint8)).save(path)
    return path


def export_episode(store: TaskStore, task: Task, folder: Path, seed: int = 0) -> dict:
    """Write an episode as PNG files (prompts, masks, queries, reference masks) for an HTTP query."""
    chosen = choose_prompts_and_queries(task, DEMO_PROMPTS, DEMO_QUERIES, np.random.default_rng(seed))
    if chosen is None:
        raise ValueError(f"{task.task_id} cannot supply {DEMO_PROMPTS} prompts and {DEMO_QUERIES} queries")
    episode = read_episode(store, task, *chosen)
    folder.mkdir(parents=True, exist_ok=True)
    files: dict[str, list] = {"prompt_images": [], "prompt_masks": [], "queries": [], "truths": []}
    for i, (image, mask) in enumerate(zip(episode.prompt_images[:, 0], episode.prompt_masks[:, 0], strict=True)):
        files["prompt_images"].append(_png(folder / f"prompt{i}.png", image))
        files["prompt_masks"].append(_png(folder / f"prompt{i}_mask.png", mask))
    for j, (image, mask) in enumerate(zip(episode.query_images[:, 0], episode.query_masks[:, 0], strict=True)):
        files["queries"].append(_png(folder / f"query{j}.png", image))
        files["truths"].append(mask.astype(np.uint8))
    files["baseline"] = mean_prompt_mask(episode.prompt_masks, DEMO_QUERIES)[:, 0] > 0.5
    files["prompt_cases"] = sorted({ref.case for ref in chosen[0]})
    files["query_cases"] = sorted({ref.case for ref in chosen[1]})
    return files


def _print_pipeline(report: NightlyReport, console: Console) -> None:
    """What each step of the pipeline run did: the data, the training, the held-out table, the gate, the endpoint."""
    for ingested in report.ingest.datasets:
        console.print(
            f"ingested {ingested.dataset} ({ingested.center}, {ingested.modality}): "
            f"{ingested.cases} cases, {ingested.rejected} rejected"
        )
    for stored in report.preprocess.datasets:
        console.print(
            f"store: {stored.dataset} version {stored.version}: {stored.cases} cases, "
            f"{stored.tasks} tasks, {stored.slices} slices"
        )
    trained = report.train
    console.print(
        f"MLflow run {trained.run_id}, final loss {trained.final_loss:.3f}, "
        f"registered version {trained.version} (challenger)"
    )
    evaluation = trained.evaluation.report
    ns = sorted(evaluation.summary[evaluation.primary], key=int)
    table = Table(f"{evaluation.spec.split} Dice [95 % CI over tasks]", *[f"N={n}" for n in ns])
    for method, per_n in evaluation.summary.items():
        cells = [  # the controls and the ablation have the largest N only: each cell under its own N
            f"{per_n[n]['dice'].mean:.3f} [{per_n[n]['dice'].ci_low:.2f}, {per_n[n]['dice'].ci_high:.2f}]"
            if n in per_n
            else "–"
            for n in ns
        ]
        table.add_row(method, *cells)
    console.print(table)
    for n, gain in evaluation.learned_contribution.items():
        console.print(
            f"learned contribution at N={n} ({evaluation.primary} − prior rule): {gain.mean:+.3f} "
            f"[{gain.ci_low:+.3f}, {gain.ci_high:+.3f}] over {gain.tasks} tasks"
        )
    if trained.test_evaluation:
        test = trained.test_evaluation.report
        largest_test = max(test.summary[test.primary], key=int)
        cells = {m: test.summary[m][largest_test]["dice"] for m in (test.primary, "prior_rule")}
        console.print(
            f"test split (reported, never used for a decision), N={largest_test}: "
            + ", ".join(f"{m} {c.mean:.3f} [{c.ci_low:.2f}, {c.ci_high:.2f}]" for m, c in cells.items())
            + f" over {cells[test.primary].tasks} tasks"
        )
    largest = max(ns, key=int)
    methods = [m for m in evaluation.summary if "+" not in m]  # the controls are in the table above
    centers = Table(f"{evaluation.spec.split} Dice at N={largest}, per center", *methods)
    for center, per_method in evaluation.dice_at_largest_n.center.items():
        centers.add_row(center, *[f"{per_method[m].mean:.3f}" if m in per_method else "—" for m in methods])
    console.print(centers)
    console.print(f"promotion gate: champion = version {report.gate.champion} ({report.gate.reason})")
    console.print(f"endpoint {report.roll_out.url} serves version {report.roll_out.serving} (OpenAPI at /docs)")


def run_demo(settings: Settings, steps: int, console: Console) -> None:
    start = time.monotonic()
    console.rule("1/2 the nightly pipeline once: ingest → preprocess → train → gate → serve → retention")
    console.print(
        f"synthetic multi-center datasets + 6 real datasets; tiny PromptSeg, {steps} steps on Ray Train with 2 CPU "
        "workers (DDP, gloo); quick evaluation on the validation split (datasets, a center and structures never "
        "trained on) beside the prior rule and the controls; Ray Serve on 127.0.0.1"
    )
    sources = [*write_synthetic_datasets(settings.root / "sources", n_cases=6, seed=0), *sample_manifests()]
    config = NightlyConfig(sources=[str(source) for source in sources], steps=steps, start_endpoint=True)
    report = nightly(config)
    _print_pipeline(report, console)
    url = report.roll_out.url
    evaluation = report.train.evaluation

    console.rule("2/2 query validation tasks over HTTP (prompts and queries from different cases)")
    store = TaskStore.open(settings.store, settings.resolution)
    validation = settings.training.splits.tasks(store.tasks(), "validation", store.resolution)
    results = Table("validation task", "prompt cases → query cases", "PromptSeg Dice", "mean-prompt-mask Dice")
    example = None
    client = PromptSegClient(url)
    for task in [t for t in validation if len(t.cases) > 1 and t.axis == 2]:  # axial slices, several cases
        folder = settings.root / "demo" / task.task_id.replace("/", "_")
        files = export_episode(store, task, folder)
        answer = query_files(
            client,
            folder / "out",
            SegmentRequest(modality="CT"),
            prompt_images=files["prompt_images"],
            prompt_masks=files["prompt_masks"],
            queries=files["queries"],
        )
        masks = [np.asarray(Image.open(o["mask"])) > 0 for o in answer["outputs"]]
        model_dice = np.mean([dice_score(m, t) for m, t in zip(masks, files["truths"], strict=True)])
        base_dice = np.mean([dice_score(b, t) for b, t in zip(files["baseline"], files["truths"], strict=True)])
        results.add_row(
            task.task_id,
            f"{','.join(files['prompt_cases'])} → {','.join(files['query_cases'])}",
            f"{model_dice:.3f}",
            f"{base_dice:.3f}",
        )
        example = example or (folder, files)
    client.close()
    console.print(results)
    console.print(f"evaluation report, Dice-vs-N plot and overlays: {evaluation.report_dir}")
    if example is not None:
        folder, files = example
        console.print(f"overlays of the HTTP queries: {folder / 'out'}")
        prompts = " ".join(
            f"--prompt-image {p} --prompt-mask {m}"
            for p, m in zip(files["prompt_images"], files["prompt_masks"], strict=True)
        )
        console.print("query by hand:")
        console.print(
            f"  promptseg --workspace {settings.root} query {prompts} --query {files['queries'][0]} "
            f"--out promptseg-out",
            soft_wrap=True,
        )
        console.print(
            f"  curl -s {url}/v1/segment -F prompt_images=@{files['prompt_images'][0]} "
            f"-F prompt_masks=@{files['prompt_masks'][0]} -F queries=@{files['queries'][0]}",
            soft_wrap=True,
        )
    for name, address in stages.addresses(settings).items():
        if address:
            console.print(f"{name.replace('_', ' ')}: {address}", soft_wrap=True)
    console.print(f"stop the endpoint with: promptseg --workspace {settings.root} serve stop")
    console.print(f"demo finished in {time.monotonic() - start:.0f} s")
