"""The served endpoint over real HTTP (Ray Serve on the session's Ray head) and the `promptseg query` CLI."""

from __future__ import annotations

import io
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from pipelines.cli import app
from promptseg.client import APIError, PromptSegClient, decode_mask
from promptseg.served_tasks import ServedTasks
from promptseg.settings import Settings


def _png(path: Path, array: np.ndarray) -> Path:
    Image.fromarray(array.astype(np.uint8)).save(path)
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Path]]:
    """Two prompt pairs and two queries of different native sizes: a bright disc on a darker background."""
    folder = tmp_path_factory.mktemp("http")
    out: dict[str, list[Path]] = {"images": [], "masks": [], "queries": []}
    for i, (h, w) in enumerate([(70, 90), (64, 64)]):
        yy, xx = np.mgrid[:h, :w]
        disc = (yy - h / 2) ** 2 + (xx - w / 2 - 5 * i) ** 2 < (12 + 2 * i) ** 2
        out["images"].append(_png(folder / f"p{i}.png", 60 + 150 * disc))
        out["masks"].append(_png(folder / f"p{i}_mask.png", 255 * disc))
    for j, (h, w) in enumerate([(80, 60), (50, 100)]):
        yy, xx = np.mgrid[:h, :w]
        out["queries"].append(_png(folder / f"q{j}.png", 60 + 150 * ((yy - h / 3) ** 2 + (xx - w / 2) ** 2 < 100)))
    return out


def test_health_and_model_info(served: str, trained: dict) -> None:
    with PromptSegClient(served) as client:
        assert client.healthz().model_version == trained["version"]
        info = client.model_info()
    assert info.alias == "champion" and info.version == trained["version"]
    assert info.model_card["license"] == "Apache-2.0"
    assert httpx.get(f"{served}/docs").status_code == 200


def test_segment_returns_masks_on_each_query_grid(served: str, trained: dict, files: dict[str, list[Path]]) -> None:
    with PromptSegClient(served) as client:
        response = client.segment(files["images"], files["masks"], files["queries"], modality="MR")
    assert response.model_version == trained["version"] and response.n_prompts == 2
    shapes = [decode_mask(m.mask_png_base64).shape for m in response.masks]
    assert shapes == [(80, 60), (50, 100)] and [(m.height, m.width) for m in response.masks] == shapes
    assert set(response.timings_ms) == {"decode", "encode_prompts", "segment"}


def test_a_registered_task_segments_like_inline_prompts_until_deleted(
    settings: Settings, served: str, files: dict[str, list[Path]]
) -> None:
    with PromptSegClient(served) as client:
        task = client.create_task(files["images"], files["masks"], modality="MR")
        assert client.create_task(files["images"], files["masks"], modality="MR") == task  # content-addressed
        assert client.get_task(task.task_id) == task and task.n_prompts == 2
        cached = client.segment_task(task.task_id, files["queries"])
        inline = client.segment(files["images"], files["masks"], files["queries"], modality="MR")
        assert cached.task_id == task.task_id and cached.n_prompts == 2
        assert [m.mask_png_base64 for m in cached.masks] == [m.mask_png_base64 for m in inline.masks]
        stored = ServedTasks(settings.root / "serve_tasks").get(task.task_id)  # what a restarted replica reads
        assert stored.modality == "MR" and stored.n_prompts == 2
        client.delete_task(task.task_id)
        for call in (lambda: client.segment_task(task.task_id, files["queries"]), lambda: client.get_task("f" * 32)):
            with pytest.raises(APIError) as raised:
                call()
            assert raised.value.status == 404 and raised.value.code == "unknown_task"
    image = ("p.png", files["images"][0].read_bytes())
    both = httpx.post(
        f"{served}/v1/segment",
        files=[("prompt_images", image), ("queries", ("q.png", files["queries"][0].read_bytes()))],
        data={"task_id": task.task_id},
        timeout=60,
    )
    assert both.status_code == 422 and "not both" in both.json()["error"]["message"]


def _post(url: str, **fields: list[tuple[str, bytes]]) -> httpx.Response:
    files = [(name, (filename, data)) for name, items in fields.items() for filename, data in items]
    return httpx.post(f"{url}/v1/segment", files=files, timeout=60)


def test_malformed_requests_get_typed_4xx_json(served: str, files: dict[str, list[Path]]) -> None:
    image = ("p.png", files["images"][0].read_bytes())
    mask = ("m.png", files["masks"][0].read_bytes())
    query = ("q.png", files["queries"][0].read_bytes())
    grey = io.BytesIO()
    Image.fromarray(np.arange(70 * 90).reshape(70, 90).astype(np.uint8)).save(grey, format="PNG")
    nan = io.BytesIO()
    np.save(nan, np.full((8, 8), np.nan))
    cases = {
        "missing prompt masks": (dict(prompt_images=[image], queries=[query]), "invalid_input", "give a task_id"),
        "missing queries": (dict(prompt_images=[image], prompt_masks=[mask]), "invalid_request", None),
        "not an image": (
            dict(prompt_images=[("x.txt", b"hello")], prompt_masks=[mask], queries=[query]),
            "invalid_input",
            "not a PNG or NPY image",
        ),
        "mask not binary": (
            dict(prompt_images=[image], prompt_masks=[("g.png", grey.getvalue())], queries=[query]),
            "invalid_input",
            "mask is not binary",
        ),
        "size mismatch": (
            dict(prompt_images=[image], prompt_masks=[("m.png", files["masks"][1].read_bytes())], queries=[query]),
            "invalid_input",
            "mask shape",
        ),
        "NaN query": (
            dict(prompt_images=[image], prompt_masks=[mask], queries=[("n.npy", nan.getvalue())]),
            "invalid_input",
            "NaN",
        ),
    }
    for name, (fields, code, message) in cases.items():
        response = _post(served, **fields)
        assert 400 <= response.status_code < 500, name
        error = response.json()["error"]
        assert error["code"] == code, name
        if message:
            assert message in error["message"], name


def test_query_cli_writes_masks_and_overlays(
    settings: Settings, served: str, files: dict[str, list[Path]], tmp_path: Path
) -> None:
    arguments = ["query", "--out", str(tmp_path), "--modality", "MR"]
    for image, mask in zip(files["images"], files["masks"], strict=True):
        arguments += ["--prompt-image", str(image), "--prompt-mask", str(mask)]
    for query in files["queries"]:
        arguments += ["--query", str(query)]
    result = CliRunner().invoke(app, arguments)
    assert result.exit_code == 0, result.output
    assert np.asarray(Image.open(tmp_path / "q1_mask.png")).shape == (50, 100)
    assert (tmp_path / "q0_overlay.png").stat().st_size > 1000


def test_segment_cli_runs_the_predictor_in_process(
    settings: Settings, served: str, files: dict[str, list[Path]], tmp_path: Path
) -> None:
    """`promptseg segment` loads the champion and ensembles over prompt subsets, writing uncertainty maps too."""
    arguments = ["segment", "--out", str(tmp_path), "--modality", "MR", "--ensemble", "3"]
    for image, mask in zip(files["images"], files["masks"], strict=True):
        arguments += ["--prompt-image", str(image), "--prompt-mask", str(mask)]
    for query in files["queries"]:
        arguments += ["--query", str(query)]
    result = CliRunner().invoke(app, arguments)
    assert result.exit_code == 0, result.output
    assert np.asarray(Image.open(tmp_path / "q1_mask.png")).shape == (50, 100)
    assert np.asarray(Image.open(tmp_path / "q0_uncertainty.png")).shape == (80, 60)
    assert (tmp_path / "q0_overlay.png").stat().st_size > 1000
