"""The serving commands: `serve start|stop|reload|status`, `query` (through the endpoint) and `segment` (in this
process)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pipelines import stages
from pipelines.cli.choices import MaskFormat, VolumeFormat
from pipelines.cli.context import settings, show
from pipelines.cli.models import where_to_look

serve = typer.Typer(
    help="The HTTP endpoint on Ray Serve. Replicas, CPUs/GPUs, batching, limits and the API key come from "
    "PROMPTSEG_SERVE_* settings.",
    no_args_is_help=True,
)


@serve.command()
def start(ctx: typer.Context, alias: str = "champion") -> None:
    """Serve the version under ALIAS over HTTP; with the endpoint running already, roll its replicas over to
    changed settings."""
    settings_in_force = settings(ctx)
    url = stages.serve(settings_in_force, alias)
    show({"url": url, "docs": f"{url}/docs", "metrics": f"{url}/metrics"})
    where_to_look(settings_in_force)


@serve.command()
def stop(ctx: typer.Context) -> None:
    """Stop the endpoint and the Ray head this workspace started."""
    show({"stopped_ray_head": stages.stop_serving(settings(ctx))})


@serve.command()
def purge(ctx: typer.Context) -> None:
    """Apply the endpoint's retention now: delete registered tasks unused for PROMPTSEG_SERVE_TASK_RETENTION_DAYS,
    finished jobs past PROMPTSEG_SERVE_JOB_RETENTION_S and audit logs older than
    PROMPTSEG_SERVE_AUDIT_RETENTION_DAYS (the nightly pipeline's retention step does the same)."""
    from pipelines.retention import purge_serving

    show(purge_serving(settings(ctx).serve).model_dump())


@serve.command()
def reload(ctx: typer.Context, url: str | None = None) -> None:
    """Make the running endpoint follow its alias now (after `champion` moved)."""
    with stages.endpoint_client(settings(ctx), url) as client:
        show(client.reload().model_dump())


@serve.command()
def status(ctx: typer.Context) -> None:
    """Where the workspace's endpoint is and what it serves; the MLflow UI and the Ray dashboard."""
    import httpx

    settings_in_force = settings(ctx)
    url = stages.recorded_serve_url(settings_in_force)
    report: dict[str, object] = {"url": url, **stages.addresses(settings_in_force)}
    if url is not None:
        report |= {"docs": f"{url}/docs", "metrics": f"{url}/metrics"}
        try:
            with stages.endpoint_client(settings_in_force, url) as client:
                report |= {"health": client.healthz().model_dump(), "model": client.model_info().model_dump()}
        except httpx.TransportError as error:
            report["health"] = f"not reachable ({error})"
    show(report)


def query(
    ctx: typer.Context,
    prompt_image: Annotated[
        list[Path] | None, typer.Option(exists=True, help="Prompt image (PNG/NPY); repeat per prompt.")
    ] = None,
    prompt_mask: Annotated[
        list[Path] | None, typer.Option(exists=True, help="Prompt mask or label map, same order.")
    ] = None,
    task: Annotated[str | None, typer.Option(help="A registered task id instead of prompt files.")] = None,
    register: Annotated[bool, typer.Option(help="Register the prompts as a task first; print its id.")] = False,
    query_image: Annotated[
        list[Path] | None, typer.Option("--query", exists=True, help="2D query (PNG/NPY); repeatable.")
    ] = None,
    volume: Annotated[Path | None, typer.Option(exists=True, help="NIfTI file, DICOM series folder or zip.")] = None,
    labels: Annotated[str | None, typer.Option(help="Label values to segment from label-map masks: '1,3'.")] = None,
    axis: Annotated[int | None, typer.Option(help="Slice axis of the volume (default: DICOM slices, NIfTI k).")] = None,
    ensemble: Annotated[int, typer.Option(help="Average over K random prompt subsets.")] = 1,
    threshold: float = 0.5,
    uncertainty: Annotated[bool, typer.Option(help="Also write float16 uncertainty maps (NPY).")] = False,
    mask_format: Annotated[MaskFormat, typer.Option(help="File format of 2D masks.")] = MaskFormat.png,
    volume_format: Annotated[VolumeFormat | None, typer.Option(help="File format of the label volume.")] = None,
    out: Path = Path("promptseg-out"),
    modality: Annotated[str | None, typer.Option(help="CT, MR, ... (default: the task's or DICOM's).")] = None,
    url: Annotated[str | None, typer.Option(help="The endpoint (default: the one this workspace started).")] = None,
) -> None:
    """Segment 2D queries and/or a volume through the HTTP endpoint, against prompt pairs or a registered task;
    write mask files (PNG/NPY, NIfTI, DICOM SEG), overlay PNGs and uncertainty maps to OUT."""
    from pipelines.querying import query_files
    from promptseg.serving.api_models import SegmentRequest

    if not (query_image or volume):
        raise typer.BadParameter("give --query files or a --volume", param_hint="--query / --volume")
    request = SegmentRequest(
        task_id=task,
        modality=modality,
        labels=labels,
        axis=axis,
        threshold=threshold,
        ensemble=ensemble,
        uncertainty=uncertainty,
        mask_format=mask_format.value,
        volume_format=volume_format.value if volume_format else None,
    )
    settings_in_force = settings(ctx)
    with stages.endpoint_client(settings_in_force, url) as client:
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
    show(report)


def segment(
    ctx: typer.Context,
    prompt_image: Annotated[list[Path], typer.Option(exists=True, help="Prompt image (PNG/NPY); repeat per prompt.")],
    prompt_mask: Annotated[list[Path], typer.Option(exists=True, help="Prompt mask, in the same order.")],
    query_image: Annotated[list[Path], typer.Option("--query", exists=True, help="Query image; repeat per query.")],
    out: Path = Path("promptseg-out"),
    modality: Annotated[str, typer.Option(help="CT, MR, ... (a DICOM modality code).")] = "CT",
    model: Annotated[str, typer.Option(help="Registered version or alias.")] = "champion",
    ensemble: Annotated[int, typer.Option(help="Ensemble size over random prompt subsets.")] = 1,
) -> None:
    """Segment query images in this process (no endpoint) with a registered version; masks, uncertainty maps and
    overlays are written to OUT."""
    from pipelines.querying import segment_files
    from promptseg.inference.predictor import Predictor
    from promptseg.registry.versions import load_version

    registry = settings(ctx).registry
    loaded = load_version(registry.tracking_uri, registry.model_name, model)
    predictor = Predictor(loaded.network, ensemble=ensemble)
    title = f"model v{loaded.version}"
    show(segment_files(predictor, prompt_image, prompt_mask, query_image, out, modality, title))
