"""Serving prepares pixels exactly as training saw them: a stored case sent to the volume route over HTTP reaches
the network as the store's own slices of that case, on every axis, for a real CT (NIfTI) and a DICOM series stored
in another voxel order; the store's CT window is the served model's; a model trained under another preparation
recipe is refused with its reason."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import zarr

from pipelines.outcomes import TrainingOutcome
from pipelines.settings import Settings
from promptseg.registry.versions import load_version
from promptseg.serving.api_models import SegmentRequest
from promptseg.serving.client import PromptSegClient
from promptseg.serving.served_model import IncompatibleModel, check_recipe
from storage.ingest_record import IngestRecord
from storage.preparation import RECIPE_VERSION
from storage.task_store import TaskStore

FLOAT16_TOLERANCE = 2e-3  # store slices are float16; the route returns them as float16 as well


@pytest.fixture(scope="module")
def sample_task(served: str, settings: Settings) -> str:
    """A CT task from two slices of the sample CT's spleen, sent without a window (the model's window applies)."""
    record = IngestRecord.load(settings.data.raw_dir / "ct-abdomen-61.json")
    image = np.asarray(nib.load(record.cases[0].image).dataobj, np.float32)
    label = np.asarray(nib.load(record.cases[0].label).dataobj)
    slices = [k for k in range(label.shape[2]) if (label[..., k] == 1).sum() > 50][:2]
    folder = settings.root / "preparation-prompts"
    folder.mkdir(exist_ok=True)
    paths: dict[str, list[Path]] = {"images": [], "masks": []}
    for k in slices:
        paths["images"].append(folder / f"image_{k}.npy")
        paths["masks"].append(folder / f"mask_{k}.npy")
        np.save(paths["images"][-1], image[..., k])
        np.save(paths["masks"][-1], (label[..., k] == 1).astype(np.uint8))
    with PromptSegClient(served) as client:
        return client.create_task(paths["images"], paths["masks"], "CT").task_id


@pytest.mark.parametrize("dataset", ["ct-abdomen-61", "synth-center-c"])
def test_the_network_receives_the_stores_slices_of_a_case_on_every_axis(
    settings: Settings, served: str, sample_task: str, dataset: str
) -> None:
    record = IngestRecord.load(settings.data.raw_dir / f"{dataset}.json")
    case = record.cases[0]
    store = TaskStore.open(settings.store)
    version = store.version_info(dataset)
    entry = version["cases"][case.store_id]
    root = zarr.open_group(settings.store, mode="r")
    assert len(entry["axes"]) >= 2
    with PromptSegClient(served) as client:
        for axis, indices in entry["axes"].items():
            request = SegmentRequest(
                axis=int(axis),
                modality=record.modality,
                target_spacing=tuple(version["plan"]["target_spacing"]),
                model_input=True,
            )
            result = client.segment_volume(Path(case.image), sample_task, request=request).volume
            received = np.load(io.BytesIO(base64.b64decode(result.model_input_npy_base64)))
            stored = root[f"datasets/{dataset}/cases/{entry['key']}/axis{axis}/image"][:]
            assert received.shape[1:] == stored.shape[1:] and len(received) >= max(indices) + 1
            np.testing.assert_allclose(
                received[indices].astype(np.float32), stored.astype(np.float32), atol=FLOAT16_TOLERANCE
            )
            assert sorted(result.shape) == sorted(case.shape)  # the file's own grid, in its voxel order


def test_the_store_window_reaches_the_model_card_and_another_recipe_is_refused(
    settings: Settings, trained: TrainingOutcome
) -> None:
    store_window = TaskStore.open(settings.store).preparation()["ct_window"]
    model = load_version(settings.registry.tracking_uri, settings.registry.model_name, trained.version)
    preparation = model.model_card["preparation"]
    assert preparation["recipe_version"] == RECIPE_VERSION
    assert store_window is not None and preparation["ct_window"] == pytest.approx(store_window)
    sample = IngestRecord.load(settings.data.raw_dir / "ct-abdomen-61.json")
    assert store_window != pytest.approx(list(sample.fingerprint.foreground_percentiles))  # pooled, not per dataset
    assert check_recipe(model) is model

    older = type(model)(model.network, model.name, model.version, {**model.model_card, "preparation": {}})
    with pytest.raises(IncompatibleModel, match=f"recipe unrecorded.*recipe {RECIPE_VERSION}"):
        check_recipe(older)
