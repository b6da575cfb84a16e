"""The annotated-volume commands: `propagate` (label a few slices, segment the rest of the scan) and `predict`
(a folder of scans in, a folder of label volumes out). The work is pipelines.propagation's."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from pipelines import stages
from pipelines.cli.context import settings, show


class Via(StrEnum):
    """Where propagation runs."""

    process = "process"
    endpoint = "endpoint"


def propagate(
    ctx: typer.Context,
    image: Annotated[Path, typer.Option(exists=True, help="The scan: NIfTI file, DICOM series folder or zip.")],
    label: Annotated[
        Path, typer.Option(exists=True, help="Its labels on the same grid: NIfTI, DICOM series, or DICOM SEG.")
    ],
    axis: Annotated[
        int | None, typer.Option(help="RAS axis (0 sagittal, 1 coronal, 2 axial); default the slices'.")
    ] = None,
    annotated: Annotated[str | None, typer.Option(help="Slices annotated as empty (negatives): '12,40'.")] = None,
    labels: Annotated[str | None, typer.Option(help="Label values to propagate: '1,3' (default: every one).")] = None,
    names: Annotated[str | None, typer.Option(help="Their structure names, same order: 'liver,spleen'.")] = None,
    modality: Annotated[str | None, typer.Option(help="CT, MR, ... (default: DICOM's, else CT).")] = None,
    window: Annotated[str | None, typer.Option(help="CT window 'low,high' (default: the model's).")] = None,
    largest_component: Annotated[bool, typer.Option(help="Keep each structure's largest 3D component.")] = False,
    via: Annotated[Via, typer.Option(help="Run in this process or through the endpoint.")] = Via.process,
    model: Annotated[str, typer.Option(help="Registered version or alias (in this process).")] = "champion",
    url: Annotated[str | None, typer.Option(help="The endpoint (default: the one this workspace started).")] = None,
    out: Path = Path("promptseg-out"),
) -> None:
    """Segment the rest of an annotated scan along one axis: the slices holding a label are the prompts, the
    others are segmented against them; the label volume (on the scan's grid) and an overlay go to OUT."""
    from pipelines.propagation import propagate_in_process, propagate_via_endpoint
    from promptseg.serving.api_models import VolumeTaskRequest

    request = VolumeTaskRequest(
        modality=modality, window=window, labels=labels, names=names, axis=axis, annotated=annotated
    )
    in_force = settings(ctx)
    if via == Via.endpoint:
        with stages.endpoint_client(in_force, url) as client:
            show(propagate_via_endpoint(client, image, label, out, request, largest_component))
        return
    from promptseg.inference.predictor import Predictor
    from promptseg.registry.versions import load_version

    loaded = load_version(in_force.registry.tracking_uri, in_force.registry.model_name, model)
    predictor = Predictor(loaded.network)
    title = f"model v{loaded.version}"
    show(propagate_in_process(predictor, loaded.model_card, image, label, out, request, title, largest_component))


def predict(
    ctx: typer.Context,
    inputs: Annotated[Path, typer.Option("-i", "--input", exists=True, file_okay=False, help="Folder of scans.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Folder for the label volumes.")],
    task: Annotated[str, typer.Option(help="The registered task to segment against.")],
    axis: Annotated[int | None, typer.Option(help="RAS axis (default: each scan's slice axis).")] = None,
    labels: Annotated[str | None, typer.Option(help="Label values of the task: '1,3' (default: all).")] = None,
    fuse_axes: Annotated[bool, typer.Option(help="Fuse the three axes (a task with prompts on each).")] = False,
    largest_component: Annotated[bool, typer.Option(help="Keep each structure's largest 3D component.")] = False,
    url: Annotated[str | None, typer.Option(help="The endpoint (default: the one this workspace started).")] = None,
) -> None:
    """Segment every scan of a folder (NIfTI files, DICOM series folders or zips) against a task through the
    endpoint: one label volume and overlay per scan in OUTPUT; a scan that fails is listed, the others go on."""
    from pipelines.propagation import predict_folder
    from promptseg.serving.api_models import SegmentRequest

    request = SegmentRequest(
        task_id=task, axis=axis, labels=labels, fuse_axes=fuse_axes, largest_component=largest_component
    )
    with stages.endpoint_client(settings(ctx), url) as client:
        report = predict_folder(client, inputs, output, request)
    show(report)
    if report["failed"]:
        raise typer.Exit(1)
