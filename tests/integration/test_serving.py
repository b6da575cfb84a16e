"""The served endpoint over real HTTP (Ray Serve on the session's Ray head) and the `promptseg query` CLI."""

from __future__ import annotations

import gzip
import io
import tempfile
import zipfile
from pathlib import Path

import httpx
import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from PIL import Image
from pydicom.uid import generate_uid
from typer.testing import CliRunner

from pipelines.cli import app
from pipelines.outcomes import TrainingOutcome
from pipelines.settings import Settings
from promptseg.serving.client import APIError, PromptSegClient, decode_mask
from promptseg.serving.served_tasks import ServedTasks


def test_health_and_model_info(served: str, trained: TrainingOutcome) -> None:
    with PromptSegClient(served) as client:
        assert client.healthz().model_version == trained.version
        info = client.model_info()
    assert info.alias == "champion" and info.version == trained.version
    assert info.model_card["license"] == "Apache-2.0"
    assert httpx.get(f"{served}/docs").status_code == 200


def test_segment_returns_masks_on_each_query_grid(
    served: str, trained: TrainingOutcome, http_files: dict[str, list[Path]]
) -> None:
    with PromptSegClient(served) as client:
        response = client.segment(http_files["images"], http_files["masks"], http_files["queries"], modality="MR")
    assert response.model_version == trained.version and response.n_prompts == 2
    shapes = [decode_mask(m, response.labels).shape for m in response.masks]
    assert shapes == [(80, 60), (50, 100)] and [(m.height, m.width) for m in response.masks] == shapes
    assert response.labels == [1] and response.ensemble == 1
    assert set(response.timings_ms) == {"decode", "encode_prompts", "segment", "encode_result"}


def test_a_registered_task_segments_like_inline_prompts_until_deleted(
    settings: Settings, served: str, http_files: dict[str, list[Path]]
) -> None:
    with PromptSegClient(served) as client:
        task = client.create_task(http_files["images"], http_files["masks"], modality="MR")
        assert client.create_task(http_files["images"], http_files["masks"], modality="MR") == task  # content-addressed
        assert client.get_task(task.task_id) == task and task.n_prompts == 2
        cached = client.segment_task(task.task_id, http_files["queries"])
        inline = client.segment(http_files["images"], http_files["masks"], http_files["queries"], modality="MR")
        assert cached.task_id == task.task_id and cached.n_prompts == 2
        assert [m.mask_base64 for m in cached.masks] == [m.mask_base64 for m in inline.masks]
        stored = ServedTasks(settings.serve.tasks_dir).get(task.task_id)  # what a restarted replica reads
        assert stored.modality == "MR" and stored.n_prompts == 2
        client.delete_task(task.task_id)
        for call in (
            lambda: client.segment_task(task.task_id, http_files["queries"]),
            lambda: client.get_task("f" * 32),
        ):
            with pytest.raises(APIError) as raised:
                call()
            assert raised.value.status == 404 and raised.value.code == "unknown_task"
    image = ("p.png", http_files["images"][0].read_bytes())
    both = httpx.post(
        f"{served}/v1/segment",
        files=[("prompt_images", image), ("queries", ("q.png", http_files["queries"][0].read_bytes()))],
        data={"task_id": task.task_id},
        timeout=60,
    )
    assert both.status_code == 422 and "not both" in both.json()["detail"]


def test_tasks_are_listed_and_arrays_segment_like_their_files(served: str, http_files: dict[str, list[Path]]) -> None:
    arrays = {kind: [np.asarray(Image.open(path)) for path in paths] for kind, paths in http_files.items()}
    with PromptSegClient(served, timeout=60) as client:
        task = client.create_task(arrays["images"], arrays["masks"], modality="MR")  # sent as NPY files
        assert task in client.list_tasks()
        from_files = client.segment_task(task.task_id, http_files["queries"])
        from_arrays = client.segment_task(task.task_id, arrays["queries"])
        client.delete_task(task.task_id)
        assert task.task_id not in {listed.task_id for listed in client.list_tasks()}
    assert [m.mask_base64 for m in from_arrays.masks] == [m.mask_base64 for m in from_files.masks]


def test_every_error_of_the_framework_is_problem_details(served: str) -> None:
    answers = {
        (404, "not_found"): httpx.get(f"{served}/v1/nothing"),
        (405, "method_not_allowed"): httpx.put(f"{served}/v1/segment"),
        (422, "invalid_request"): httpx.post(f"{served}/v1/segment", data={"threshold": "2"}, files={"x": b"x"}),
        (400, "bad_request"): httpx.post(
            f"{served}/v1/segment", content=b"--b\r\nbroken", headers={"content-type": "multipart/form-data"}
        ),
    }
    for (status, code), response in answers.items():
        assert response.status_code == status, (code, response.text)
        assert response.headers["content-type"] == "application/problem+json", code
        problem = response.json()
        assert (problem["status"], problem["code"], problem["type"]) == (status, code, f"urn:promptseg:problem:{code}")
        assert problem["title"] and problem["detail"] and problem["instance"].endswith(response.headers["x-request-id"])


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def _zip(entries: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def _nifti_header(shape: tuple[int, ...], dtype: type) -> bytes:
    """A NIfTI-1 file's header and extension flag only: no voxels."""
    header = nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(dtype)
    header.set_data_offset(352)
    return header.binaryblock + bytes(4)


def _dicom_zip(without: str) -> bytes:
    """A zipped 4-slice DICOM series whose instances lack the attribute `without`."""
    entries, series = {}, {"StudyInstanceUID": generate_uid(), "SeriesInstanceUID": generate_uid()}
    for index in range(4):
        image = sitk.GetImageFromArray(np.zeros((1, 16, 16), np.int16))
        image.SetOrigin((0.0, 0.0, 2.0 * index))
        buffer = io.BytesIO()
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "slice.dcm"
            sitk.WriteImage(image, str(path))
            dataset = pydicom.dcmread(path)
        for keyword, uid in series.items():
            setattr(dataset, keyword, uid)
        delattr(dataset, without)
        dataset.save_as(buffer)
        entries[f"{index}.dcm"] = buffer.getvalue()
    return _zip(entries)


def _bad_inputs(http_files: dict[str, list[Path]]) -> dict[str, tuple[dict, str, str | None]]:
    """Every kind of bad input of issue 6: (multipart fields, error code, words the message must hold)."""
    image = ("p.png", http_files["images"][0].read_bytes())
    mask = ("m.png", http_files["masks"][0].read_bytes())
    query = ("q.png", http_files["queries"][0].read_bytes())
    prompts = {"prompt_images": [image], "prompt_masks": [mask]}
    grey = io.BytesIO()
    Image.fromarray(np.arange(70 * 90).reshape(70, 90).astype(np.uint8)).save(grey, format="PNG")
    huge = io.BytesIO()
    Image.new("L", (5000, 5000)).save(huge, format="PNG")  # 25 Mpixel of zeros: a few kB that would inflate
    bomb_header = io.BytesIO()
    np.lib.format.write_array_header_1_0(bomb_header, {"descr": "<f8", "fortran_order": False, "shape": (10**5,) * 2})
    nifti = nib.Nifti1Image(np.zeros((32, 32, 8), np.float32), np.eye(4))
    nifti_gz = gzip.compress(nifti.to_bytes())
    gzip_of_zeros = gzip.compress(bytes(8 << 20), 9)  # no NIfTI header in it
    # a header declaring 1024×1024×64 float32 voxels, then a few zeros: refused from the header, nothing inflated
    bomb = gzip.compress(_nifti_header((1024, 1024, 64), np.float32) + bytes(1 << 20), 9)
    header_only = _nifti_header((64, 64, 64), np.int16)  # a 352-byte file declaring 512 kB of voxels
    query_files = {"queries": [query] * 257}  # over the 256 files a request may carry
    return {
        "missing prompt masks": ({"prompt_images": [image], "queries": [query]}, "invalid_input", "give a task_id"),
        "zero prompts and no task": ({"queries": [query]}, "invalid_input", "give a task_id"),
        "missing queries": (prompts, "invalid_input", "2D queries or one volume"),
        "not an image": (
            {"prompt_images": [("x.txt", b"hello")], "prompt_masks": [mask], "queries": [query]},
            "invalid_input",
            "not a PNG or NPY image",
        ),
        "empty file": ({**prompts, "queries": [("q.png", b"")]}, "invalid_input", "empty"),
        "truncated PNG": ({**prompts, "queries": [("q.png", query[1][:60])]}, "invalid_input", "unreadable PNG"),
        "PNG decompression bomb": ({**prompts, "queries": [("q.png", huge.getvalue())]}, "invalid_input", "exceeds"),
        "NPY decompression bomb": (
            {**prompts, "queries": [("q.npy", bomb_header.getvalue())]},
            "invalid_input",
            "exceeds",
        ),
        "wrong number of dimensions": (
            {**prompts, "queries": [("q.npy", _npy(np.zeros((3, 8, 8))))]},
            "invalid_input",
            "expected a 2D image",
        ),
        "mask not binary": (
            {"prompt_images": [image], "prompt_masks": [("g.png", grey.getvalue())], "queries": [query]},
            "invalid_input",
            "mask is not binary",
        ),
        "label map of fractions": (
            {
                "prompt_images": [image],
                "prompt_masks": [("f.npy", _npy(np.full((70, 90), 0.5)))],
                "queries": [query],
                "labels": "1",
            },
            "invalid_input",
            "whole numbers",
        ),
        "size mismatch": (
            {
                "prompt_images": [image],
                "prompt_masks": [("m.png", http_files["masks"][1].read_bytes())],
                "queries": [query],
            },
            "invalid_input",
            "mask shape",
        ),
        "NaN query": ({**prompts, "queries": [("n.npy", _npy(np.full((8, 8), np.nan)))]}, "invalid_input", "NaN"),
        "unknown task": ({"task_id": "f" * 32, "queries": [query]}, "unknown_task", "no task"),
        "bad threshold": ({**prompts, "queries": [query], "threshold": "1.5"}, "invalid_request", "threshold"),
        "mask format gif": ({**prompts, "queries": [query], "mask_format": "gif"}, "invalid_request", "mask_format"),
        "labels not numbers": ({**prompts, "queries": [query], "labels": "1,liver"}, "invalid_input", "labels"),
        "reversed window": ({**prompts, "queries": [query], "window": "240,-160"}, "invalid_input", "window"),
        "truncated NIfTI": (
            {**prompts, "volume": [("v.nii.gz", nifti_gz[: len(nifti_gz) // 2])]},
            "invalid_input",
            "truncated",
        ),
        "gzip without a NIfTI header": (
            {**prompts, "volume": [("v.nii.gz", gzip_of_zeros)]},
            "invalid_input",
            "NIfTI header",
        ),
        "NIfTI decompression bomb": ({**prompts, "volume": [("v.nii.gz", bomb)]}, "over_budget", "over its limit"),
        "header-only NIfTI": ({**prompts, "volume": [("v.nii", header_only)]}, "invalid_input", "header declares"),
        "zero-size NPY query": (
            {**prompts, "queries": [("z.npy", _npy(np.zeros((0, 64))))]},
            "invalid_input",
            "empty",
        ),
        "zero-size NPY prompt": (
            {"prompt_images": [("z.npy", _npy(np.zeros((0, 64))))], "prompt_masks": [mask], "queries": [query]},
            "invalid_input",
            "empty",
        ),
        "infinite window": ({**prompts, "queries": [query], "window": "-inf,inf"}, "invalid_input", "finite"),
        "overflowing window": ({**prompts, "queries": [query], "window": "-1e308,1e308"}, "invalid_input", "finite"),
        "too many files": ({**prompts, **query_files}, "over_budget", "files"),
        "too many labels": (
            {**prompts, "queries": [query], "labels": ",".join(str(v) for v in range(1, 41))},
            "over_budget",
            "label values",
        ),
        "unpaired prompts": (
            {"prompt_images": [image, image], "prompt_masks": [mask], "queries": [query]},
            "invalid_input",
            "masks for 2",
        ),
        "DICOM SEG of a series without a frame of reference": (
            {**prompts, "volume": [("s.zip", _dicom_zip(without="FrameOfReferenceUID"))]},
            "invalid_input",
            "FrameOfReferenceUID",
        ),
        "2D NIfTI": (
            {**prompts, "volume": [("v.nii", nib.Nifti1Image(np.zeros((8, 8), np.float32), np.eye(4)).to_bytes())]},
            "invalid_input",
            "expected a 3D volume",
        ),
        "zip path traversal": (
            {**prompts, "volume": [("s.zip", _zip({"../../etc/x.dcm": b"x"}))]},
            "invalid_input",
            "path traversal",
        ),
        "zip decompression bomb": (
            {**prompts, "volume": [("s.zip", _zip({"a.dcm": bytes(257 << 20)}))]},
            "invalid_input",
            "decompression bomb",
        ),
        "zip of no DICOM": (
            {**prompts, "volume": [("s.zip", _zip({"a.dcm": b"hello"}))]},
            "invalid_input",
            "no DICOM series",
        ),
        "not a volume": ({**prompts, "volume": [("v.bin", b"0" * 400)]}, "invalid_input", "not a NIfTI volume"),
    }


def test_every_bad_input_gets_a_typed_4xx_json_naming_the_problem(
    served: str, http_files: dict[str, list[Path]]
) -> None:
    for name, (fields, code, message) in _bad_inputs(http_files).items():
        upload = [(k, v) for k, items in fields.items() if isinstance(items, list) for v in items]
        form = {k: v for k, v in fields.items() if isinstance(v, str)}
        response = httpx.post(f"{served}/v1/segment", files=upload or None, data=form, timeout=60)
        assert 400 <= response.status_code < 500, (name, response.status_code, response.text[:300])
        assert response.headers["content-type"] == "application/problem+json", name
        error = response.json()
        assert error["code"] == code and error["status"] == response.status_code, (name, error)
        if message:
            assert message in error["detail"] or message in error.get("file", ""), (name, error)
    pair = [
        (f, (p.name, p.read_bytes()))
        for f, p in (("prompt_images", http_files["images"][0]), ("prompt_masks", http_files["masks"][0]))
    ]
    for window in ("-inf,inf", "-1e308,1e308", "nan,1"):  # a task with such a window would fail every later query
        response = httpx.post(f"{served}/v1/tasks", files=pair, data={"modality": "CT", "window": window}, timeout=60)
        assert (response.status_code, response.json()["code"]) == (422, "invalid_input"), (window, response.text)
    assert httpx.get(f"{served}/healthz").status_code == 200  # and the endpoint is still there


def test_query_cli_writes_masks_and_overlays(
    settings: Settings, served: str, http_files: dict[str, list[Path]], tmp_path: Path
) -> None:
    arguments = ["query", "--out", str(tmp_path), "--modality", "MR"]
    for image, mask in zip(http_files["images"], http_files["masks"], strict=True):
        arguments += ["--prompt-image", str(image), "--prompt-mask", str(mask)]
    for query in http_files["queries"]:
        arguments += ["--query", str(query)]
    result = CliRunner().invoke(app, arguments)
    assert result.exit_code == 0, result.output
    assert np.asarray(Image.open(tmp_path / "q1_mask.png")).shape == (50, 100)
    assert (tmp_path / "q0_overlay.png").stat().st_size > 1000


def test_segment_cli_runs_the_predictor_in_process(
    settings: Settings, served: str, http_files: dict[str, list[Path]], tmp_path: Path
) -> None:
    """`promptseg segment` loads the champion and ensembles over prompt subsets, writing uncertainty maps too."""
    arguments = ["segment", "--out", str(tmp_path), "--modality", "MR", "--ensemble", "3"]
    for image, mask in zip(http_files["images"], http_files["masks"], strict=True):
        arguments += ["--prompt-image", str(image), "--prompt-mask", str(mask)]
    for query in http_files["queries"]:
        arguments += ["--query", str(query)]
    result = CliRunner().invoke(app, arguments)
    assert result.exit_code == 0, result.output
    assert np.asarray(Image.open(tmp_path / "q1_mask.png")).shape == (50, 100)
    assert np.asarray(Image.open(tmp_path / "q0_uncertainty.png")).shape == (80, 60)
    assert (tmp_path / "q0_overlay.png").stat().st_size > 1000
