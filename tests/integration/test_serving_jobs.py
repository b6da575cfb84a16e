"""Long volumes as jobs over real HTTP: a job cancelled while it runs (its runner stops, no result), a NIfTI volume
job polled to success whose result equals the synchronous route's, and unknown jobs answered as problems."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path

import httpx
import nibabel as nib
import numpy as np
import pytest

from pipelines.settings import Settings
from promptseg.inference.volume_io import read_label_volume, read_volume
from promptseg.serving.api_models import PROBLEM_MEDIA_TYPE
from promptseg.serving.client import APIError, PromptSegClient, volume_upload
from storage.synthetic import LABELS

LIVER = LABELS["liver"]


def _image(raw_sources: list[Path], index: int) -> Path:
    return raw_sources[0] / "imagesTr" / f"center-a_{index:03d}_0000.nii.gz"


@pytest.fixture(scope="module")
def task_id(served: str, raw_sources: list[Path], tmp_path_factory: pytest.TempPathFactory) -> str:
    """Two axial liver slices of a center-a case as a registered task."""
    folder = tmp_path_factory.mktemp("job-prompts")
    image = np.asarray(nib.load(_image(raw_sources, 0)).dataobj, np.float32)
    label = np.asarray(nib.load(raw_sources[0] / "labelsTr" / "center-a_000.nii.gz").dataobj)
    liver = [k for k in range(label.shape[2]) if (label[..., k] == LIVER).sum() > 50]
    images, masks = [], []
    for k in (liver[len(liver) // 3], liver[2 * len(liver) // 3]):
        images.append(folder / f"k{k}.npy")
        masks.append(folder / f"k{k}_labels.npy")
        np.save(images[-1], image[..., k])
        np.save(masks[-1], label[..., k].astype(np.uint8))
    with PromptSegClient(served) as client:
        return client.create_task(images, masks, "CT", labels=[LIVER]).task_id


def test_a_running_job_is_cancelled_and_its_runner_stops(
    served: str, settings: Settings, raw_sources: list[Path], task_id: str
) -> None:
    with httpx.Client(base_url=served, timeout=60) as http:
        answer = http.post(
            "/v1/jobs", files=[("volume", volume_upload(_image(raw_sources, 3)))], data={"task_id": task_id}
        )
    assert answer.status_code == 202, answer.text
    job_id = answer.json()["job_id"]
    assert answer.json()["state"] == "queued" and answer.headers["location"] == f"/v1/jobs/{job_id}"
    with PromptSegClient(served) as client:
        assert client.cancel_job(job_id).state == "cancelled"
        assert client.job(job_id).state == "cancelled"
        with pytest.raises(APIError) as refused:
            client.job_result(job_id)
        assert (refused.value.status, refused.value.code) == (409, "job_cancelled")
        with pytest.raises(APIError) as waited:
            client.wait_for_job(job_id, poll_s=0.2, timeout_s=10)
        assert waited.value.code == "job_cancelled"

        folder = settings.serve.jobs_dir / job_id  # the runner, not only the answer, stops
        deadline = time.monotonic() + 60
        while (folder / "files").exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not (folder / "files").exists() and not (folder / "result.json").exists()
        assert json.loads((folder / "job.json").read_text())["info"]["state"] == "cancelled"

        assert client.cancel_job(job_id) is None  # a finished job is deleted
        assert not folder.exists()


def test_a_volume_job_succeeds_with_the_synchronous_routes_result(
    served: str, raw_sources: list[Path], task_id: str
) -> None:
    path = _image(raw_sources, 2)
    with PromptSegClient(served) as client:
        job = client.submit_job(path, task_id)
        assert job.state == "queued" and job.error is None
        result = client.wait_for_job(job.job_id, poll_s=0.25, timeout_s=300)
        info = client.job(job.job_id)
        direct = client.segment_volume(path, task_id)
    assert info.state == "succeeded" and info.created <= info.updated
    assert result.request_id != direct.request_id and result.labels == direct.labels == [LIVER]
    assert result.volume.model_dump(exclude={"volume_base64"}) == direct.volume.model_dump(exclude={"volume_base64"})
    volume = read_volume(path.name, path.read_bytes())
    labels = [read_label_volume(base64.b64decode(r.volume.volume_base64), "nifti", volume) for r in (result, direct)]
    assert labels[0].shape == volume.array.shape and np.array_equal(labels[0], labels[1])
    assert labels[0].any()


def test_unknown_jobs_and_results_are_problems(served: str) -> None:
    with PromptSegClient(served) as client:
        for call in (client.job, client.job_result, client.cancel_job):
            with pytest.raises(APIError) as unknown:
                call("0" * 32)
            assert (unknown.value.status, unknown.value.code) == (404, "unknown_job")
    with httpx.Client(base_url=served, timeout=30) as http:
        answer = http.get("/v1/jobs/not-a-job/result")
    assert answer.status_code == 404 and answer.headers["content-type"] == PROBLEM_MEDIA_TYPE
    assert answer.json()["code"] == "unknown_job" and answer.json()["status"] == 404
