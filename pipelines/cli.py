"""The `promptseg` command line: one subcommand per platform stage, plus `demo`.

Settings come from PROMPTSEG_* variables (promptseg.settings); `--workspace` and `--resolution` override them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from pipelines import environment, stages
from promptseg.settings import Settings

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
    console.print_json(json.dumps(payload, default=str))


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
    workers: int = 2,
    batch_size: int = 4,
    seed: int = 0,
    run_name: str | None = None,
    register: bool = True,
    bottleneck: Annotated[bool, typer.Option(help="Variational information bottleneck on the prompt tokens.")] = False,
    pretrained_encoder: Annotated[
        Path | None, typer.Option(help="Local SAM / SAM-Med2D ViT weights for the image encoder.")
    ] = None,
    synthetic_fraction: Annotated[float, typer.Option(help="Share of batches made of synthetic tasks.")] = 0.25,
    augment: Annotated[bool, typer.Option(help="Task augmentation of every episode (see task_augment.py).")] = True,
) -> None:
    """Train an in-context network (SIZE: tiny, small, base, or universeg for the baseline) with Ray Train;
    register the result as the `challenger` version."""
    _show(
        stages.train(
            _settings(ctx),
            steps=steps,
            size=size,
            workers=workers,
            batch_size=batch_size,
            seed=seed,
            run_name=run_name,
            register=register,
            bottleneck=bottleneck,
            pretrained_encoder=pretrained_encoder,
            synthetic_fraction=synthetic_fraction,
            augment=None if augment else {"enabled": False},
        )
    )


@app.command()
def evaluate(
    ctx: typer.Context,
    model: str = "challenger",
    resamples: int = 3,
    queries: int = 4,
    baseline: Annotated[
        list[Path] | None, typer.Option(help="Checkpoint folder of another in-context network; repeatable.")
    ] = None,
    supervised_steps: Annotated[int, typer.Option(help="Train the supervised UNet upper bound (0: skip).")] = 400,
    ensemble: Annotated[int, typer.Option(help="Predictor ensemble size over prompt subsets.")] = 1,
) -> None:
    """Evaluate a registered version (alias or number) on the held-out tasks beside the baselines."""
    _show(
        stages.evaluate(
            _settings(ctx),
            model,
            resamples=resamples,
            queries=queries,
            baselines=baseline,
            supervised_steps=supervised_steps,
            ensemble=ensemble,
        )
    )


@app.command()
def register(ctx: typer.Context, run_id: str, checkpoint: Path) -> None:
    """Register a training run's checkpoint folder as a new version (alias `challenger`)."""
    _show({"version": stages.register(_settings(ctx), run_id, checkpoint)})


@app.command()
def promote(ctx: typer.Context, version: str | None = None) -> None:
    """Move the `champion` alias to VERSION (default: the challenger)."""
    _show({"champion": stages.promote(_settings(ctx), version)})


@app.command()
def serve(ctx: typer.Context, stop: bool = False, alias: str = "champion") -> None:
    """Serve the registered model over HTTP on Ray Serve (`--stop` stops it and the Ray head it started)."""
    settings = _settings(ctx)
    if stop:
        _show({"stopped_ray_head": stages.stop_serving(settings)})
        return
    url = stages.serve(settings, alias)
    _show({"url": url, "docs": f"{url}/docs"})


@app.command()
def query(
    ctx: typer.Context,
    prompt_image: Annotated[list[Path], typer.Option(help="Prompt image (PNG/NPY); repeat per prompt.")],
    prompt_mask: Annotated[list[Path], typer.Option(help="Prompt mask, in the same order.")],
    query_image: Annotated[list[Path], typer.Option("--query", help="Query image; repeat per query.")],
    out: Path = Path("promptseg-out"),
    modality: str = "CT",
    url: str | None = None,
) -> None:
    """Segment query images against prompt pairs through the HTTP endpoint; write masks and overlays."""
    from pipelines.querying import query_files

    _show(query_files(url or stages.serve_url(_settings(ctx)), prompt_image, prompt_mask, query_image, out, modality))


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
    from promptseg.predictor import Predictor
    from promptseg.registry import load_version

    settings = _settings(ctx)
    loaded = load_version(settings.tracking_uri, settings.model_name, model)
    predictor = Predictor(loaded.network, ensemble=ensemble)
    title = f"model v{loaded.version}"
    _show(segment_files(predictor, prompt_image, prompt_mask, query_image, out, modality, title))


@app.command()
def demo(ctx: typer.Context, steps: int = 400) -> None:
    """Run every stage end to end on the embedded defaults and print the held-out result."""
    from pipelines.demo import run_demo

    run_demo(_settings(ctx), steps=steps, console=console)
