"""The replica's memory for the worst request its budget allows, over real HTTP: the largest int16 volume the
per-request budget (PROMPTSEG_SERVE_MAX_DECODED_MB, 256 MiB in the tests) lets the endpoint decode and segment is
answered with the replica's resident memory (sampled every 50 ms) staying within twice the budget above its warm
baseline, and the same volume one slice larger is refused with 413 before it is segmented."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import nibabel as nib
import numpy as np

from pipelines import cluster
from pipelines.memory_probe import RssSampler, baseline_rss, replica_pid
from pipelines.settings import Settings
from promptseg.serving.app import APP_NAME
from promptseg.serving.client import PromptSegClient
from promptseg.serving.volume_parts import most_slices_allowed

WIDTH = 256
SPACING = (0.8, 0.8, 2.5)


def _volume(path: Path, slices: int) -> bytes:
    array = np.random.default_rng(slices).integers(-1024, 1500, (WIDTH, WIDTH, slices), dtype=np.int16)
    nib.save(nib.Nifti1Image(array, np.diag([*SPACING, 1.0])), path)
    return path.read_bytes()


def test_the_worst_allowed_volume_stays_within_twice_the_budget(
    settings: Settings, served: str, http_files: dict[str, list[Path]], tmp_path: Path
) -> None:
    limits = settings.serve.limits
    slices = most_slices_allowed(limits, WIDTH, 2, SPACING, SPACING, settings.resolution)
    assert 8 < slices < limits.max_slices  # the byte budget binds, not the slice limit
    with PromptSegClient(served) as client:
        task = client.create_task(http_files["images"], http_files["masks"], "MR").task_id
    form = {"task_id": task, "target_spacing": ",".join(map(str, SPACING))}

    def post(body: bytes) -> httpx.Response:
        files = [("volume", ("v.nii.gz", body))]
        return httpx.post(f"{served}/v1/segment", data=form, files=files, timeout=300)

    pid = {"replica": replica_pid(cluster.dashboard_url(settings.services_dir), APP_NAME)}
    assert post(_volume(tmp_path / "warm.nii.gz", 8)).status_code == 200  # the network's working memory
    worst, over = _volume(tmp_path / "worst.nii.gz", slices), _volume(tmp_path / "over.nii.gz", slices + 1)
    baseline = baseline_rss(pid)["replica"]
    with RssSampler(pid) as sampler:
        answer = post(worst)
        time.sleep(0.2)
    assert answer.status_code == 200, answer.text[:300]
    assert answer.json()["volume"]["shape"] == [WIDTH, WIDTH, slices]
    growth = sampler.peak("replica") - baseline
    assert growth < 2 * limits.max_decoded_bytes, (growth, limits.max_decoded_bytes, slices)

    refused = post(over)
    assert (refused.status_code, refused.json()["code"]) == (413, "over_budget"), refused.text[:300]
