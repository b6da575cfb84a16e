"""The `promptseg` command line: one subcommand per platform stage, plus `demo`.

Settings come from PROMPTSEG_* variables (pipelines.settings); `--workspace` and `--resolution` override them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from pydantic_core import to_jsonable_python
from rich.console import Console

from pipelines import environment, stages
from pipelines.settings import Settings

if TYPE_CHECKING:
    from pipelines.nightly import NightlyConfig

app = typer.Typer(help="PromptSeg platform: in-context medical image segmentation.", no_args_is_help=True)
console = Console()


def _settings(ctx: typer.Context) -> Settings:
    return ctx.obj


@app.callback()
def main(
    ctx: typer.Context,
    workspace: Annotated[Path | None, typer.Option(help="Workspace folder (PROMPTSEG_WORKSPACE).")] = None,
    resolution: Annotated[int | None, typer.Option(help="Store/model resolution (PROMPTSEG_RESOLUTION).")] = None,
) -> None:
    overrides = {k: v for k, v in {"workspace": workspace, "resolution": resolution}.items() if v is not None}
    settings = Settings(**overrides)
    environment.prepare(settings)
    ctx.obj = settings


def _show(payload: object) -> None:
    """Print a result as JSON: typed hand-offs (pydantic models, dataclasses) as their fields, paths as text."""
    console.print_json(json.dumps(to_jsonable_python(payload, fallback=str)))


@app.command()
def synth(out: Path, cases: int = 6, seed: int = 0) -> None:
    """Write the multi-center simulator's datasets (NIfTI/MSD, NRRD, DICOM) under OUT."""
    from storage.synthetic import write_synthetic_datasets

    _show([str(p) for p in write_synthetic_datasets(out, cases, seed)])


@app.command()
def verify(sources: list[Path]) -> None:
    """Check raw datasets before ingest; print every problem with its file (exit code 1 if any)."""
    report = stages.verify(sources)
    _show(report)
    if any(report.values()):
        raise typer.Exit(1)


@app.command()
def ingest(ctx: typer.Context, sources: list[Path]) -> None:
    """Inspect raw datasets (MSD folders or manifest .yaml files) into ingest records."""
    _show(stages.ingest(_settings(ctx), sources))


@app.command()
def preprocess(ctx: typer.Context, dataset: Annotated[list[str] | None, typer.Option()] = None) -> None:
    """Harmonize ingested datasets into the Zarr task store (cached per case)."""
    _show(stages.preprocess(_settings(ctx), dataset))


@app.command()
def train(
    ctx: typer.Context,
    steps: int = 400,
    size: str = "tiny",
    workers: Annotated[int, typer.Option(help="Ray Train workers (DDP); batch and learning rate scale with it.")] = 2,
    gpu: Annotated[bool, typer.Option(help="One GPU per worker (NCCL, bf16 autocast).")] = False,
    batch_size: Annotated[int, typer.Option(help="Episodes per worker per step.")] = 4,
    seed: int = 0,
    run_name: str | None = None,
    resume: Annotated[bool, typer.Option(help="Continue the run named --run-name from its last checkpoint.")] = False,
    checkpoint_every: int = 50,
    max_failures: Annotated[int, typer.Option(help="Worker failures survived by restarting from a checkpoint.")] = 2,
    register: bool = True,
    bottleneck: Annotated[bool, typer.Option(help="Variational information bottleneck on the prompt tokens.")] = False,
    pretrained_encoder: Annotated[
        Path | None, typer.Option(help="Local SAM / SAM-Med2D ViT weights for the image encoder.")
    ] = None,
    synthetic_fraction: Annotated[float, typer.Option(help="Share of batches made of synthetic tasks.")] = 0.25,
    augment: Annotated[bool, typer.Option(help="Task augmentation of every episode (see task_augment.py).")] = True,
) -> None:
    """Train an in-context network (SIZE: tiny, small, base, or universeg for the baseline) with Ray Train, run the
    quick held-out evaluation and register the result as the `challenger` version."""
    options = (
        {}
        if resume
        else {
            "steps": steps,
            "size": size,
            "num_workers": workers,
            "use_gpu": gpu,
            "batch_size": batch_size,
            "seed": seed,
            "checkpoint_every": checkpoint_every,
            "max_failures": max_failures,
            "bottleneck": bottleneck,
            "pretrained_encoder": str(pretrained_encoder.resolve()) if pretrained_encoder else "",
            "synthetic_fraction": synthetic_fraction,
            "augment": {} if augment else {"enabled": False},
        }
    )
    _show(stages.train(_settings(ctx), run_name=run_name, resume=resume, register=register, **options))


@app.command()
def evaluate(
    ctx: typer.Context,
    model: str = "challenger",
    profile: Annotated[str, typer.Option(help="quick (N 1/4/8, 3 resamples) or full (N to 64, baselines).")] = "quick",
    resamples: Annotated[int | None, typer.Option(help="Override the profile's prompt resamples.")] = None,
    queries: Annotated[int | None, typer.Option(help="Override the queries per resample.")] = None,
    n_prompts: Annotated[list[int] | None, typer.Option(help="Override the prompt counts; repeatable.")] = None,
    baseline: Annotated[
        list[Path] | None, typer.Option(help="Checkpoint folder of another in-context network; repeatable.")
    ] = None,
    supervised_steps: Annotated[int | None, typer.Option(help="Supervised UNet steps (0: skip).")] = None,
    min_gap: Annotated[
        int | None, typer.Option(help="Slices between prompts and queries in a single-case dataset.")
    ] = None,
    universeg_steps: Annotated[int, typer.Option(help="Training steps of the full profile's UniverSeg.")] = 2000,
) -> None:
    """Evaluate a registered version (alias or number) on its held-out tasks beside the baselines."""
    _show(
        stages.evaluate(
            _settings(ctx),
            model,
            profile=profile,
            baselines=baseline,
            universeg_steps=universeg_steps,
            resamples=resamples,
            queries=queries,
            n_prompts=n_prompts or None,
            supervised_steps=supervised_steps,
            min_gap=min_gap,
        )
    )


@app.command()
def register(ctx: typer.Context, run_id: str, checkpoint: Path) -> None:
    """Register a training run's checkpoint folder as a new version (alias `challenger`)."""
    _show({"version": stages.register(_settings(ctx), run_id, checkpoint)})


@app.command()
def promote(
    ctx: typer.Context,
    version: Annotated[str | None, typer.Option(help="Pin `champion` to this version by hand.")] = None,
    margin: Annotated[float, typer.Option(help="Dice the challenger must gain over the champion.")] = 0.0,
    rollback: Annotated[bool, typer.Option(help="Return `champion` to its previous version.")] = False,
    history: Annotated[bool, typer.Option(help="List every move of `champion`.")] = False,
) -> None:
    """Promote the challenger if it beats the champion on the same held-out evaluation (or pin, roll back, list)."""
    from pipelines import promotion
    from promptseg.registry.versions import CHAMPION, alias_history

    settings = _settings(ctx)
    if history:
        _show(alias_history(settings.registry.tracking_uri, settings.registry.model_name, CHAMPION))
    elif rollback:
        _show(promotion.rollback(settings))
    else:
        _show(stages.promote(settings, version=version, margin=margin))


@app.command()
def serve(
    ctx: typer.Context,
    stop: Annotated[bool, typer.Option(help="Stop the endpoint and the Ray head it started.")] = False,
    reload: Annotated[bool, typer.Option(help="Make the running endpoint follow its alias now.")] = False,
    alias: str = "champion",
) -> None:
    """Serve the registered model over HTTP on Ray Serve. Replicas, CPUs/GPUs, batching, limits and the API key come
    from PROMPTSEG_SERVE_* settings; running it again with changed settings rolls the replicas over."""
    settings = _settings(ctx)
    if stop:
        _show({"stopped_ray_head": stages.stop_serving(settings)})
        return
    if reload:
        with stages.endpoint_client(settings) as client:
            _show(client.reload().model_dump())
        return
    url = stages.serve(settings, alias)
    _show({"url": url, "docs": f"{url}/docs", "metrics": f"{url}/metrics"})


@app.command()
def query(
    ctx: typer.Context,
    prompt_image: Annotated[list[Path] | None, typer.Option(help="Prompt image (PNG/NPY); repeat per prompt.")] = None,
    prompt_mask: Annotated[list[Path] | None, typer.Option(help="Prompt mask or label map, same order.")] = None,
    task: Annotated[str | None, typer.Option(help="A registered task id instead of prompt files.")] = None,
    register: Annotated[bool, typer.Option(help="Register the prompts as a task first; print its id.")] = False,
    query_image: Annotated[list[Path] | None, typer.Option("--query", help="2D query (PNG/NPY); repeatable.")] = None,
    volume: Annotated[Path | None, typer.Option(help="NIfTI file, DICOM series folder or zip.")] = None,
    labels: Annotated[str | None, typer.Option(help="Label values to segment from label-map masks: '1,3'.")] = None,
    axis: Annotated[int | None, typer.Option(help="Slice axis of the volume (default: DICOM slices, NIfTI k).")] = None,
    ensemble: Annotated[int, typer.Option(help="Average over K random prompt subsets.")] = 1,
    threshold: float = 0.5,
    uncertainty: Annotated[bool, typer.Option(help="Also write float16 uncertainty maps (NPY).")] = False,
    mask_format: Annotated[str, typer.Option(help="png or npy for 2D masks.")] = "png",
    volume_format: Annotated[str | None, typer.Option(help="nifti, dicom-seg or npy.")] = None,
    out: Path = Path("promptseg-out"),
    modality: Annotated[str | None, typer.Option(help="CT, MR, ... (default: the task's or DICOM's).")] = None,
    url: str | None = None,
) -> None:
    """Segment 2D queries and/or a volume through the HTTP endpoint, against prompt pairs or a registered task;
    write mask files (PNG/NPY, NIfTI, DICOM SEG), overlay PNGs and uncertainty maps to OUT."""
    from pydantic import ValidationError

    from pipelines.querying import query_files
    from promptseg.serving.api_models import SegmentRequest
    from promptseg.serving.client import APIError

    if not (query_image or volume):
        raise typer.BadParameter("give --query files or a --volume")
    settings = _settings(ctx)
    try:
        request = SegmentRequest(
            task_id=task,
            modality=modality,
            labels=labels,
            axis=axis,
            threshold=threshold,
            ensemble=ensemble,
            uncertainty=uncertainty,
            mask_format=mask_format,
            volume_format=volume_format,
        )
        with stages.endpoint_client(settings, url) as client:
            report = query_files(
                client,
                out,
                request,
                prompt_images=prompt_image,
                prompt_masks=prompt_mask,
                queries=query_image,
                volume=volume,
                register=register,
            )
    except (APIError, ValidationError) as error:
        console.print(f"[red]{error}[/red]")
        raise typer.Exit(1) from error
    _show(report)


@app.command()
def segment(
    ctx: typer.Context,
    prompt_image: Annotated[list[Path], typer.Option(help="Prompt image (PNG/NPY); repeat per prompt.")],
    prompt_mask: Annotated[list[Path], typer.Option(help="Prompt mask, in the same order.")],
    query_image: Annotated[list[Path], typer.Option("--query", help="Query image; repeat per query.")],
    out: Path = Path("promptseg-out"),
    modality: str = "CT",
    model: Annotated[str, typer.Option(help="Registered version or alias.")] = "champion",
    ensemble: Annotated[int, typer.Option(help="Ensemble size over random prompt subsets.")] = 1,
) -> None:
    """Segment query images in this process (no endpoint) with a registered version; masks, uncertainty maps and
    overlays are written to OUT."""
    from pipelines.querying import segment_files
    from promptseg.inference.predictor import Predictor
    from promptseg.registry.versions import load_version

    settings = _settings(ctx)
    loaded = load_version(settings.registry.tracking_uri, settings.registry.model_name, model)
    predictor = Predictor(loaded.network, ensemble=ensemble)
    title = f"model v{loaded.version}"
    _show(segment_files(predictor, prompt_image, prompt_mask, query_image, out, modality, title))


FineTune = Annotated[bool, typer.Option(help="Start from the champion's weights.")]
Sources = Annotated[list[Path] | None, typer.Option(help="Raw dataset; default: those ingested.")]


def _nightly_config(settings: Settings, steps: int, fine_tune: bool, source: list[Path] | None) -> NightlyConfig:
    from pipelines.nightly import NightlyConfig

    sources = [str(p.resolve()) for p in source or []]
    return NightlyConfig(sources=sources, steps=steps, fine_tune=fine_tune, webhook_url=settings.nightly.webhook_url)


@app.command()
def nightly(
    ctx: typer.Context,
    steps: int = 300,
    fine_tune: FineTune = False,
    source: Sources = None,
) -> None:
    """Run the nightly pipeline once now: ingest → preprocess → train → gate → roll out → retention."""
    from pipelines.nightly import nightly as nightly_flow

    settings = _settings(ctx)
    _show(nightly_flow(_nightly_config(settings, steps, fine_tune, source)))


@app.command()
def schedule(
    ctx: typer.Context,
    steps: int = 300,
    fine_tune: FineTune = False,
    source: Sources = None,
) -> None:
    """Register the nightly deployment (cron PROMPTSEG_NIGHTLY_CRON in PROMPTSEG_NIGHTLY_TIMEZONE) with the Prefect
    API at PREFECT_API_URL and its process work pool; start a worker with `prefect worker start --pool <pool>`."""
    from pipelines.schedule import register_nightly

    settings = _settings(ctx)
    config = _nightly_config(settings, steps, fine_tune, source)
    _show(register_nightly(settings.nightly.cron, settings.nightly.timezone, settings.nightly.work_pool, config))


@app.command()
def demo(ctx: typer.Context, steps: int = 400) -> None:
    """Run every stage end to end on the embedded defaults and print the held-out result."""
    from pipelines.demo import run_demo

    run_demo(_settings(ctx), steps=steps, console=console)
