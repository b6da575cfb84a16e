"""Operating the endpoint over real HTTP: the API key, overload answers, slow uploads, a replica restart, concurrent
clients (batched per replica), a reload after the champion alias moves, and the metrics. A second application
(`/secure`: API key, one work slot and one waiting request, bodies due within 3 s) shares the session's Ray Serve
and task folder with the main one."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import nibabel as nib
import numpy as np
import pytest
import ray
import torch
from pydantic import SecretStr

from pipelines.outcomes import TrainingOutcome
from pipelines.settings import Settings
from promptseg.nets.checkpoint import load_model, save_model
from promptseg.nets.factory import build_model
from promptseg.registry.versions import CHALLENGER, CHAMPION, move_alias, register_checkpoint
from promptseg.serving.app import InsecureBinding, ServeOptions, deploy, options_from
from promptseg.serving.client import APIError, PromptSegClient, decode_mask

API_KEY = "9d2e7c41b8a05f36e1d4c7b2a9f08e53"  # 32 hex digits: placeholders and keys under 24 characters are refused
SECURE = "promptseg-secure"


@pytest.fixture(scope="module")
def secure(settings: Settings, served: str) -> str:
    """The second application: API key on, one request working and one waiting at most, bodies due in 3 s."""
    limits = {"work_slots": 1, "max_waiting": 1, "max_batch_size": 1, "body_timeout_s": 3.0}
    options = options_from(settings.serve.model_copy(update={"api_key": SecretStr(API_KEY), **limits}))
    return deploy(settings.registry.tracking_uri, settings.registry.model_name, CHAMPION, options, SECURE, "/secure")


def test_binding_beyond_loopback_needs_an_api_key(settings: Settings) -> None:
    beyond = settings.serve.model_copy(update={"host": "0.0.0.0", "api_key": None})
    with pytest.raises(InsecureBinding, match="API key"):
        options_from(beyond)
    with pytest.raises(InsecureBinding, match="API key"):  # options built by hand: deploy applies the rule too
        deploy(settings.registry.tracking_uri, settings.registry.model_name, CHAMPION, ServeOptions(beyond))


def test_the_api_key_guards_every_route_but_health(secure: str, served: str, http_files: dict[str, list[Path]]) -> None:
    assert httpx.get(f"{secure}/healthz").status_code == 200
    assert httpx.get(f"{served}/v1/model").status_code == 200  # the main app has no key (loopback only)
    missing, wrong = httpx.get(f"{secure}/v1/model"), httpx.get(f"{secure}/v1/model", headers={"X-API-Key": "x"})
    assert (missing.status_code, missing.json()["code"]) == (401, "missing_api_key")
    assert (wrong.status_code, wrong.json()["code"]) == (403, "wrong_api_key")
    assert missing.headers["content-type"] == wrong.headers["content-type"] == "application/problem+json"
    with PromptSegClient(secure, api_key=API_KEY) as client:
        task = client.create_task(http_files["images"], http_files["masks"], "MR")
        assert client.model_info().alias == CHAMPION
    for method, path in (("DELETE", f"/v1/tasks/{task.task_id}"), ("POST", "/v1/reload"), ("GET", "/metrics")):
        assert httpx.request(method, f"{secure}{path}").status_code == 401, path
    with PromptSegClient(secure, api_key=API_KEY) as client:
        assert client.get_task(task.task_id) == task  # the refused delete deleted nothing
        with pytest.raises(APIError) as raised:
            PromptSegClient(secure, api_key="wrong").delete_task(task.task_id)
        assert raised.value.status == 403


def test_bodies_over_the_limit_get_413_before_decoding(served: str) -> None:
    too_big = bytes(17 << 20)  # the test settings limit bodies to 16 MB
    declared = httpx.post(f"{served}/v1/segment", files=[("queries", ("q.npy", too_big))], timeout=60)
    assert declared.status_code == 413 and declared.json()["code"] == "body_too_large"

    def chunks():  # a multipart body streamed without a Content-Length: cut off while it arrives
        yield b'--b\r\nContent-Disposition: form-data; name="queries"; filename="q.npy"\r\n\r\n'
        for _ in range(17):
            yield bytes(1 << 20)
        yield b"\r\n--b--\r\n"

    form = {"content-type": "multipart/form-data; boundary=b"}
    streamed = httpx.post(f"{served}/v1/segment", content=chunks(), headers=form, timeout=60)
    assert streamed.status_code == 413 and streamed.json()["code"] == "body_too_large", streamed.text


def test_overload_is_answered_quickly_with_503(secure: str, raw_sources: list[Path], http_files: dict) -> None:
    volume = raw_sources[0] / "imagesTr" / "center-a_000_0000.nii.gz"
    fields = [("volume", (volume.name, volume.read_bytes()))]
    fields += [("prompt_images", (p.name, p.read_bytes())) for p in http_files["images"]]
    fields += [("prompt_masks", (p.name, p.read_bytes())) for p in http_files["masks"]]

    def call(_: int) -> tuple[httpx.Response, float]:
        start = time.perf_counter()
        response = httpx.post(f"{secure}/v1/segment", files=fields, headers={"X-API-Key": API_KEY}, timeout=120)
        return response, time.perf_counter() - start

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(call, range(8)))
    statuses = [response.status_code for response, _ in answers]
    assert set(statuses) <= {200, 503} and statuses.count(200) >= 1 and statuses.count(503) >= 1, statuses
    slowest_success = max(seconds for response, seconds in answers if response.status_code == 200)
    for response, seconds in answers:
        if response.status_code == 503:
            assert seconds < slowest_success  # refused, not queued
            assert response.headers["retry-after"] == "5" and response.json()["code"] == "overloaded"
            assert response.headers["content-type"] == "application/problem+json"


def _slow_upload(url: str, path: str, declared: int) -> socket.socket:
    """A client that sends its headers and the first bytes of a body of `declared` bytes, then stalls."""
    host, port = url.removeprefix("http://").split("/")[0].split(":")
    connection = socket.create_connection((host, int(port)))
    head = f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: multipart/form-data; boundary=b\r\n"
    connection.sendall(f"{head}Content-Length: {declared}\r\nX-API-Key: {API_KEY}\r\n\r\n--b\r\n".encode())
    connection.setblocking(False)
    return connection


def _answered(connection: socket.socket) -> bool:
    try:
        return connection.recv(1, socket.MSG_PEEK) != b""
    except BlockingIOError:
        return False


def test_slow_uploads_hold_no_work_slot_and_time_out_with_408(
    secure: str, served: str, http_files: dict[str, list[Path]]
) -> None:
    stalled = [_slow_upload(served, "/v1/segment", 1 << 20) for _ in range(8)]  # as many as the work slots
    try:
        time.sleep(1.0)  # every stalled body has reached the replica
        with PromptSegClient(served, retries=0) as client:
            answer = client.segment(http_files["images"], http_files["masks"], http_files["queries"], modality="MR")
        assert len(answer.masks) == 2 and not any(_answered(c) for c in stalled)  # answered before any of them
    finally:
        for connection in stalled:
            connection.close()

    late = _slow_upload(secure, "/secure/v1/segment", 1 << 20)  # the secure app wants bodies within 3 s
    late.setblocking(True)
    late.settimeout(30)
    start = time.monotonic()
    reply = b""
    while b"body_timeout" not in reply and b"\r\n0\r\n\r\n" not in reply:  # headers and body may come apart
        chunk = late.recv(4096)
        if not chunk:
            break
        reply += chunk
    reply = reply.decode()
    late.close()
    assert reply.startswith("HTTP/1.1 408") and "body_timeout" in reply and time.monotonic() - start < 15, reply
    with PromptSegClient(secure, api_key=API_KEY, retries=0) as client:  # its only work slot is free
        answer = client.segment(http_files["images"], http_files["masks"], http_files["queries"][:1], modality="MR")
    assert len(answer.masks) == 1


def test_a_long_volume_does_not_hold_up_another_clients_query(
    served: str, http_files: dict[str, list[Path]], tmp_path: Path
) -> None:
    long = tmp_path / "long.nii.gz"  # 600 slices of 2 × 2 voxels: a few hundred bytes, 600 slices to segment
    nib.save(nib.Nifti1Image(np.zeros((2, 2, 600), np.int16), np.eye(4)), long)
    with PromptSegClient(served) as client:
        task = client.create_task(http_files["images"], http_files["masks"], "MR").task_id
    finished: dict[str, float] = {}

    def volume() -> None:
        with PromptSegClient(served, retries=0) as client:
            answer = client.segment_volume(long, task_id=task, axis=2, target_spacing=(1.0, 1.0, 1.0))
            assert answer.volume.n_slices == 600
        finished["volume"] = time.monotonic()

    with ThreadPoolExecutor(1) as pool:
        running = pool.submit(volume)
        time.sleep(1.0)  # the volume's slices are going through the network
        with PromptSegClient(served, retries=0) as client:
            assert len(client.segment_task(task, http_files["queries"]).masks) == 2
        finished["query"] = time.monotonic()
        running.result()
    assert finished["query"] < finished["volume"]  # its batch ran between the volume's chunks


def _replica_names(app_name: str) -> set[str]:
    return {
        actor["name"]
        for actor in ray.util.list_named_actors(all_namespaces=True)
        if actor["name"].startswith(f"SERVE_REPLICA::{app_name}#")
    }


def test_a_task_survives_a_replica_restart(secure: str, served: str, http_files: dict[str, list[Path]]) -> None:
    with PromptSegClient(served) as client:
        task = client.create_task(http_files["images"], http_files["masks"], "MR")
        before = client.segment_task(task.task_id, http_files["queries"])
    (replica,) = _replica_names(SECURE)
    ray.kill(ray.get_actor(replica, namespace="serve"), no_restart=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not ((names := _replica_names(SECURE)) and replica not in names):
        time.sleep(0.5)
    assert names and replica not in names  # Serve replaced the killed replica with another
    assert httpx.get(f"{secure}/healthz", timeout=120).status_code == 200  # answered once it is up
    with PromptSegClient(secure, api_key=API_KEY, retries=10) as client:
        after = client.segment_task(task.task_id, http_files["queries"])  # re-encoded from the durable prompts
    assert [m.mask_base64 for m in after.masks] == [m.mask_base64 for m in before.masks]
    miss = 'promptseg_task_cache_total{result="miss"} 1.0'
    assert miss in _metrics_once(secure, lambda text: miss in text, {"X-API-Key": API_KEY})


def test_concurrent_clients_get_the_answers_of_one_client(served: str, http_files: dict[str, list[Path]]) -> None:
    with PromptSegClient(served) as client:
        task = client.create_task(http_files["images"], http_files["masks"], "MR")
        alone = [decode_mask(m, [1]) for m in client.segment_task(task.task_id, http_files["queries"]).masks]

    def call(index: int) -> list[np.ndarray]:
        with PromptSegClient(served) as own:
            response = own.segment_task(task.task_id, [http_files["queries"][index % 2]])
        return [decode_mask(m, [1]) for m in response.masks]

    before = _batches(served)
    with ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(call, range(18)))
    for index, (mask,) in enumerate(answers):
        assert np.mean(mask == alone[index % 2]) > 0.999
    after = _batches(served, at_least=before[1] + 18)
    assert after[1] - before[1] == 18 and after[0] - before[0] < 18  # requests went through the network together


def _metrics_once(url: str, ready: Callable[[str], bool], headers: dict | None = None, timeout_s: float = 30) -> str:
    """The endpoint's metrics once `ready` holds: replicas' values reach Ray's metrics agents every report
    interval (a second in these tests)."""
    deadline = time.monotonic() + timeout_s
    while not ready(text := httpx.get(f"{url}/metrics", headers=headers).text) and time.monotonic() < deadline:
        time.sleep(0.5)
    return text


def _batch_values(text: str) -> tuple[float, float]:
    """(batches, requests batched): the batch-size histogram's count and the exact counter (Ray derives a
    histogram's sum from bucket midpoints)."""
    value = dict(line.split() for line in text.splitlines() if line.startswith("promptseg_batch"))
    batches, batched = value.get("promptseg_batch_requests_count", 0), value.get("promptseg_batched_requests_total", 0)
    return float(batches), float(batched)


def _batches(url: str, at_least: float = 0.0) -> tuple[float, float]:
    """(batches, requests batched) over every replica, once at least `at_least` requests were batched and two
    reads 2.5 s apart (over two report intervals) agree: every request answered so far is counted."""
    seen: list[tuple[float, float]] = []

    def settled(text: str) -> bool:
        seen.append(_batch_values(text))
        if len(seen) > 1 and seen[-1] == seen[-2] and seen[-1][1] >= at_least:
            return True
        time.sleep(2.5)
        return False

    _metrics_once(url, settled, timeout_s=60)
    return seen[-1]


def test_metrics_count_requests_by_route_and_status_over_every_replica(served: str) -> None:
    httpx.get(f"{served}/v1/tasks/{'0' * 32}")
    not_found = 'promptseg_requests_total{route="/v1/tasks/{task_id}",status="404"}'
    text = _metrics_once(served, lambda text: not_found in text)
    assert not_found in text and "promptseg_request_seconds_bucket" in text
    assert "replica=" not in text and "promptseg_model_info{" in text  # summed: no per-replica series


def test_a_reload_after_the_alias_moves_swaps_the_model_without_failing_requests(
    settings: Settings, served: str, trained: TrainingOutcome, http_files: dict[str, list[Path]]
) -> None:
    tracking, name = settings.registry.tracking_uri, settings.registry.model_name
    folder = settings.root / "checkpoints" / "reload-untrained"
    torch.manual_seed(3)
    save_model(build_model(load_model(trained.checkpoint_dir).config), folder)
    new = register_checkpoint(folder, trained.run_id, tracking, name)
    old = trained.version
    with PromptSegClient(served) as client:
        task = client.create_task(http_files["images"], http_files["masks"], "MR")
        before = client.segment_task(task.task_id, http_files["queries"])
        assert before.model_version == old

        def hammer(_: int) -> str:
            with PromptSegClient(served) as own:
                return own.segment_task(task.task_id, http_files["queries"][:1]).model_version

        try:
            with ThreadPoolExecutor(3) as pool:
                in_flight = pool.map(hammer, range(12))
                move_alias(tracking, name, CHAMPION, new, reason="reload test")
                reload = client.reload()
                versions = list(in_flight)  # every request in flight answered (an error would raise here)
            assert reload.changed and (reload.previous_version, reload.model_version) == (old, new)
            assert set(versions) <= {old, new}
            cached = client.segment_task(task.task_id, http_files["queries"])
            inline = client.segment(http_files["images"], http_files["masks"], http_files["queries"], modality="MR")
            assert cached.model_version == inline.model_version == new == client.healthz().model_version
            assert [m.mask_base64 for m in cached.masks] == [m.mask_base64 for m in inline.masks]  # not stale
            assert [m.mask_base64 for m in cached.masks] != [m.mask_base64 for m in before.masks]
        finally:
            move_alias(tracking, name, CHAMPION, old, reason="reload test restores the champion")
            move_alias(tracking, name, CHALLENGER, old, reason="reload test restores the challenger")
            client.reload()
        assert client.segment_task(task.task_id, http_files["queries"]).model_version == old
