"""Benchmark: the endpoint under its request hardening (Ray Serve + FastAPI over HTTP, CPU) — the replica's peak
memory for the largest volume its per-request decoding budget allows, the answer to a volume just over it, and a
bounded burst of concurrent 2D requests against small in-flight and queue limits.

In a temporary workspace: a tiny PromptSeg with random weights is checkpointed, registered in MLflow and promoted
(as bench/bench_endpoint_latency.py does), served on a fresh Ray head (127.0.0.1) with the budget and overload
limits set through the environment before the settings are read (`PROMPTSEG_SERVE_MAX_DECODED_MB`,
`_WORK_SLOTS`, `_MAX_WAITING`), and queried over HTTP with plain httpx (the project's client
would retry 503s). N prompt pairs are registered as a task first. Prints one JSON line per case:

- `worst_request`: an int16 NIfTI volume (512 × 512 × K at 0.8 × 0.8 × 2.5 mm, gzipped; `--content`) with the
  largest K the request limits allow (decoded bytes: itemsize 2 + 4 working bytes a voxel; pixels; slices) through
  POST /v1/segment against the task, while the replica's RSS (and the HTTP proxy's) is sampled every 50 ms with
  psutil. Baseline = median RSS over the second before the request, after a warm-up volume; peak = largest sample
  until the answer. `ratio` = (peak − baseline) / budget bytes; `ratio_to_warm` takes the RSS after the warm-up as
  the baseline instead (the replica keeps freed memory, so a repeat's own baseline is higher).
  `replica_phase_peak_minus_baseline_bytes` splits the samples by the server's `timings_ms` (decode, segment,
  encode_result), laid back to back ending when the answer arrived, and `upload` before them: approximate, as the
  answer's serialization and transfer fall in the last. Repeated `--repeats` times. With `--finer-z F` the same
  volume is sent once more with a request `target_spacing` F times finer along z (a request may ask for it; the
  budget charges the file's header only).
- `over_budget`: the same volume with one slice more: its status, problem code, seconds and the RSS increase.
- `overload`: `--clients` threads, each with its own httpx client, each sending `--per-client` 2D requests (one
  256² PNG query against the task) back to back, all released at once; counts and p50/p99 latency by status,
  whether 503s carry Retry-After and a JSON problem body (recorded as seen, not asserted).

The replica is found by Ray's state API (the alive actor whose class name contains the deployment's). Runs in about
3–5 minutes on a 2-core machine with the defaults. It needs the machine to itself: on the shared dev machine run it
under the integration-test lock.
Usage: flock /tmp/promptseg-it.lock python bench/bench_hardening.py [--budget-mb 256] [--width 512] [--repeats 2]
    [--content noise|phantom] [--finer-z 2] [--work-slots 2] [--max-waiting 2] [--clients 32] [--per-client 4]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import nibabel as nib
import numpy as np
from bench_endpoint_latency import VOLUME_SPACING
from PIL import Image
from workspace import random_champion

from pipelines import cluster, environment, stages
from pipelines.memory_probe import RssSampler, baseline_rss, proxy_pid, replica_pid
from pipelines.settings import Settings
from promptseg.inference.budget import WORKING_BYTES, Limits
from promptseg.serving.api_models import SegmentRequest
from promptseg.serving.app import APP_NAME
from promptseg.serving.client import PromptSegClient
from promptseg.serving.settings import ServeSettings
from promptseg.serving.volume_parts import most_slices_allowed, volume_work_bytes


def charged(limits: Limits, shape: tuple[int, int, int], target_spacing: list[float], resolution: int) -> int:
    """The bytes the endpoint charges an int16 volume of `shape` at VOLUME_SPACING (decoding and segmenting)."""
    work = volume_work_bytes(shape, VOLUME_SPACING, tuple(target_spacing), resolution, [2], 1)
    return int(np.prod(shape)) * (2 + WORKING_BYTES) + work


def _percentile(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 4) if values else None


def serve_pids(dashboard: str) -> dict[str, int]:
    """The pids of the endpoint's replica and of the HTTP proxy (other Ray instances may run on the machine)."""
    return {"replica": replica_pid(dashboard, APP_NAME), "proxy": proxy_pid(dashboard)}


def nifti_gz(path: Path, shape: tuple[int, int, int], seed: int, content: str) -> int:
    """Write an int16 NIfTI (gzipped) of `shape` at VOLUME_SPACING; return its size in bytes. `noise`: uniform in
    [-1024, 1500) HU (gzip barely shrinks it); `phantom`: an elliptic body of 40 HU in air with ±8 HU of noise
    (compresses about as well as a CT, so a volume at a large budget still fits the body limit)."""
    rng = np.random.default_rng(seed)
    if content == "noise":
        array = rng.integers(-1024, 1500, shape, dtype=np.int16)
    else:
        x, y = np.ogrid[-1 : 1 : shape[0] * 1j, -1 : 1 : shape[1] * 1j]
        body = np.where((x / 0.9) ** 2 + (y / 0.7) ** 2 <= 1, 40, -1000).astype(np.int16)
        array = rng.integers(-8, 9, shape, dtype=np.int16)
        array += body[:, :, None]
    nib.save(nib.Nifti1Image(array, np.diag([*VOLUME_SPACING, 1.0])), path)
    return path.stat().st_size


def post_volume(url: str, volume: Path, form: dict[str, str], pids: dict[str, int]) -> dict[str, object]:
    """POST /v1/segment with `volume`, sampling RSS meanwhile; the answer's status, seconds and RSS figures."""
    body = volume.read_bytes()
    baseline = baseline_rss(pids)
    with RssSampler(pids) as sampler, httpx.Client(timeout=httpx.Timeout(900.0, connect=10.0)) as http:
        start = time.perf_counter()
        response = http.post(f"{url}/v1/segment", data=form, files=[("volume", (volume.name, body))])
        end = time.perf_counter()
    time.sleep(1.0)
    after = {name: process.memory_info().rss for name, process in sampler.processes.items()}
    answer = response.json() if response.headers.get("content-type", "").endswith("json") else {}
    peaks = {name: max(values) for name, values in sampler.samples.items()}
    timings = answer.get("timings_ms") or {}
    phases: dict[str, int | None] = {}
    if timings:  # the server's phases, laid back to back ending when the answer arrived (approximate)
        bounds, at = [], end
        for phase in ("encode_result", "segment", "decode"):
            spent = timings.get(phase, 0.0) + (timings.get("encode_prompts", 0.0) if phase == "segment" else 0.0)
            bounds.append((phase, at - spent / 1e3, at))
            at -= spent / 1e3
        bounds.append(("upload", start, at))
        for phase, low, high in reversed(bounds):
            peak = sampler.peak_between("replica", low, high)
            phases[phase] = None if peak is None else peak - baseline["replica"]
    return {
        "status": response.status_code,
        "code": answer.get("code"),
        "detail": answer.get("detail"),
        "seconds": round(end - start, 3),
        "body_bytes": len(body),
        "n_slices": (answer.get("volume") or {}).get("n_slices"),
        "timings_ms": {key: round(value, 1) for key, value in timings.items()},
        "rss_samples": len(sampler.samples["replica"]),
        "replica_baseline_bytes": baseline["replica"],
        "replica_peak_bytes": peaks["replica"],
        "replica_peak_minus_baseline_bytes": peaks["replica"] - baseline["replica"],
        "replica_after_bytes": after["replica"],
        "replica_phase_peak_minus_baseline_bytes": phases,
        "proxy_peak_minus_baseline_bytes": peaks["proxy"] - baseline["proxy"],
    }


@contextmanager
def served_endpoint(
    root: Path, resolution: int, n_prompts: int, target_spacing: list[float], port: int
) -> Iterator[tuple[str, str, str]]:
    """A random-weight tiny PromptSeg registered, promoted and served from a workspace in `root` (settings read from
    the environment now); yields the endpoint's URL, a registered task of `n_prompts` random pairs and the Ray
    head's dashboard."""
    settings = Settings(workspace=root / "ws", resolution=resolution, serve={"port": port})
    environment.prepare(settings)
    random_champion(settings, root / "checkpoint", target_spacing)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (resolution, resolution), dtype=np.uint8) for _ in range(n_prompts)]
    masks = [(rng.random((resolution, resolution)) > 0.8).astype(np.uint8) for _ in range(n_prompts)]
    try:
        url = stages.serve(settings)
        with PromptSegClient(url) as client:
            task = client.create_task(images, masks, "CT").task_id
        yield url, task, str(cluster.dashboard_url(settings.services_dir))
    finally:
        stages.stop_serving(settings)


@dataclass(frozen=True)
class Answer:
    """One overload request: its status (-1: no answer), seconds, headers and, unless 200, the start of its body."""

    status: int
    seconds: float
    headers: dict[str, str]
    body: bytes = b""

    def problem(self) -> dict | None:
        """The body as a JSON object, if it is one."""
        try:
            parsed = json.loads(self.body)
        except ValueError:
            return None
        return parsed if isinstance(parsed, dict) else None


def overload(url: str, task: str, resolution: int, clients: int, per_client: int) -> dict[str, object]:
    """`clients` threads released together, each with its own httpx client sending `per_client` 2D requests back
    to back; counts and latencies by status."""
    buffer = io.BytesIO()
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 255, (resolution, resolution), dtype=np.uint8)).save(buffer, format="PNG")
    query, form = buffer.getvalue(), SegmentRequest(task_id=task).form_fields()
    barrier = threading.Barrier(clients)

    def client(_: int) -> list[Answer]:
        answers = []
        with httpx.Client(base_url=url, timeout=httpx.Timeout(120.0, connect=10.0)) as http:
            barrier.wait()
            for _ in range(per_client):
                start = time.perf_counter()
                try:
                    response = http.post("/v1/segment", data=form, files=[("queries", ("q.png", query))])
                except httpx.HTTPError as error:
                    answers.append(Answer(-1, time.perf_counter() - start, {}, type(error).__name__.encode()))
                    continue
                body = b"" if response.status_code == 200 else response.content[:500]
                answers.append(Answer(response.status_code, time.perf_counter() - start, dict(response.headers), body))
        return answers

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        answers = [answer for answers in pool.map(client, range(clients)) for answer in answers]
    wall = time.perf_counter() - start
    accepted = [a.seconds for a in answers if a.status == 200]
    refused = [a for a in answers if a.status == 503]
    others = [a for a in answers if a.status not in (200, 503)]
    first = refused[0] if refused else Answer(0, 0.0, {})
    return {
        "requests": len(answers),
        "wall_s": round(wall, 2),
        "accepted": len(accepted),
        "accepted_p50_s": _percentile(accepted, 50),
        "accepted_p99_s": _percentile(accepted, 99),
        "accepted_max_s": _percentile(accepted, 100),
        "refused_503": len(refused),
        "refused_p50_s": _percentile([a.seconds for a in refused], 50),
        "refused_p99_s": _percentile([a.seconds for a in refused], 99),
        "refused_max_s": _percentile([a.seconds for a in refused], 100),
        "refused_with_retry_after": sum("retry-after" in a.headers for a in refused),
        "refused_with_json_body": sum(a.problem() is not None for a in refused),
        "refused_with_problem_code": sum(bool((a.problem() or {}).get("code")) for a in refused),
        "first_503_headers": {k: v for k, v in first.headers.items() if k in ("retry-after", "content-type")},
        "first_503_body": first.body[:200].decode("utf-8", "replace"),
        "other_statuses": {str(s): sum(a.status == s for a in others) for s in sorted({a.status for a in others})},
        "other_bodies": sorted({a.body[:200].decode("utf-8", "replace") for a in others}),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--budget-mb", type=float, default=256.0, help="PROMPTSEG_SERVE_MAX_DECODED_MB")
    parser.add_argument("--width", type=int, default=512, help="the volume's in-plane size (width × width × K)")
    parser.add_argument("--content", choices=["noise", "phantom"], default="noise", help="the volumes' voxels")
    parser.add_argument("--repeats", type=int, default=2, help="worst requests in a row")
    parser.add_argument(
        "--finer-z", type=float, default=2.0, help="one more worst request with z spacing / F (0: none)"
    )
    parser.add_argument("--work-slots", type=int, default=2, help="PROMPTSEG_SERVE_WORK_SLOTS (0: default)")
    parser.add_argument("--max-waiting", type=int, default=2, help="PROMPTSEG_SERVE_MAX_WAITING (0: default)")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--per-client", type=int, default=4)
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--target-spacing", default=",".join(map(str, VOLUME_SPACING)), help="the model card's (mm)")
    parser.add_argument("--port", type=int, default=18798)
    args = parser.parse_args()
    os.environ["PROMPTSEG_SERVE_MAX_DECODED_MB"] = str(args.budget_mb)
    if args.work_slots:
        os.environ["PROMPTSEG_SERVE_WORK_SLOTS"] = str(args.work_slots)
    if args.max_waiting:
        os.environ["PROMPTSEG_SERVE_MAX_WAITING"] = str(args.max_waiting)
    serve_settings = ServeSettings()
    limits = serve_settings.limits
    budget = limits.max_decoded_bytes
    target_spacing = [float(value) for value in args.target_spacing.split(",")]
    slices = most_slices_allowed(limits, args.width, 2, VOLUME_SPACING, tuple(target_spacing), args.resolution)
    common = {
        "bench": "hardening",
        "budget_bytes": budget,
        "max_pixels": limits.max_pixels,
        "cpus_per_replica": serve_settings.cpus_per_replica,
        "cpus": os.cpu_count(),
    }
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        worst, over, warm = root / "worst.nii.gz", root / "over.nii.gz", root / "warm.nii.gz"
        shape = (args.width, args.width, slices)
        sizes = {
            "worst": nifti_gz(worst, shape, 0, args.content),
            "over": nifti_gz(over, (args.width, args.width, slices + 1), 1, args.content),
            "warm": nifti_gz(warm, (args.width, args.width, 8), 2, args.content),
        }
        with served_endpoint(root, args.resolution, args.prompts, target_spacing, args.port) as (url, task, dashboard):
            pids = serve_pids(dashboard)
            form = {"task_id": task}
            warm_up = post_volume(url, warm, form, pids)
            volume = {
                "shape": list(shape),
                "spacing": list(VOLUME_SPACING),
                "dtype": "int16",
                "decoded_bytes": int(np.prod(shape)) * (2 + WORKING_BYTES),
                "charged_bytes": charged(limits, shape, target_spacing, args.resolution),
                "file_bytes": sizes["worst"],
                "target_spacing": target_spacing,
            }
            print(
                json.dumps({**common, "case": "warm_up", "shape": [args.width, args.width, 8], **warm_up}), flush=True
            )
            runs = [(f"worst_request_{i + 1}", form) for i in range(args.repeats)]
            if args.finer_z:
                finer = [*VOLUME_SPACING[:2], VOLUME_SPACING[2] / args.finer_z]
                runs.append(("worst_request_finer_z", {**form, "target_spacing": ",".join(map(str, finer))}))
            for case, fields in runs:
                figures = post_volume(url, worst, fields, pids)
                ratio = figures["replica_peak_minus_baseline_bytes"] / budget
                over_warm = figures["replica_peak_bytes"] - warm_up["replica_after_bytes"]
                line = {**common, "case": case, **volume, "request_target_spacing": fields.get("target_spacing")}
                line |= figures | {"ratio": round(ratio, 3), "replica_peak_minus_warm_bytes": over_warm}
                print(json.dumps(line | {"ratio_to_warm": round(over_warm / budget, 3)}), flush=True)
            figures = post_volume(url, over, form, pids)
            over_shape = [args.width, args.width, slices + 1]
            line = {**common, "case": "over_budget", "shape": over_shape}
            print(json.dumps({**line, "file_bytes": sizes["over"], **figures}), flush=True)
            figures = overload(url, task, args.resolution, args.clients, args.per_client)
            limits = {
                "max_ongoing_requests": serve_settings.max_ongoing_requests,
                "max_queued_requests": serve_settings.max_queued_requests,
                "work_slots": serve_settings.work_slots,
                "max_waiting": serve_settings.max_waiting,
                "max_batch_size": serve_settings.max_batch_size,
                "clients": args.clients,
                "per_client": args.per_client,
            }
            print(json.dumps({**common, "case": "overload", **limits, **figures}), flush=True)


if __name__ == "__main__":
    main()
