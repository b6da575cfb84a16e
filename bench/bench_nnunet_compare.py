"""Benchmark: our fingerprint + resampling + normalization against nnU-Net v2's, on the same files, side by side.

Writes the simulator's center-a dataset (NIfTI, nnU-Net v2 raw layout) once as `nnUNet_raw/Dataset501_SynthA`
and times, for 1 and 2 processes:

- ours (this interpreter, the project's virtualenv): the fingerprint (`storage.verify.check_case` per case, then
  the dataset's ingest record with its fingerprint, `storage.ingest_record.IngestRecord.from_checked`), the plan
  (`storage.preprocess.plan_for`), then per case read +
  `normalize_intensity` + `resample_volume` of image and label map, without the 2D slicing and Zarr writing
  (nnU-Net does neither); 2 processes map the per-case work over a spawned process pool;
- nnU-Net (subprocesses of a separate, benchmark-only virtualenv holding `nnunetv2`, not a project dependency):
  `nnUNetv2_extract_fingerprint -d 501 -np P --clean`, `nnUNetv2_plan_experiment -d 501`,
  `nnUNetv2_preprocess -d 501 -c 3d_fullres -np P` (3d_fullres is fingerprint → crop → normalize → resample, then
  it writes blosc2 arrays and samples foreground locations, which stay in its time).

The comparable total is fingerprint + resampling + normalization (both sides' plan steps are timed but left out
of it); the ratio ours/nnU-Net should stay under 2. nnU-Net's command times include each command's interpreter
start and imports, measured on their own as its `startup` line (`nnUNetv2_extract_fingerprint -h`). Center-a is
already at its fingerprint's target spacing, where both sides skip resampling, so both are given the same target
spacing (`--target-spacing`, RAS x y z; nnU-Net's `-overwrite_target_spacing` takes it reversed). Our SimpleITK
runs with `--itk-threads` threads per process (default 1, as nnU-Net's single-threaded scipy resampling). For
reference, the full `preprocess_case` (with slicing and Zarr writing) into a fresh TaskStore is timed once.
Without nnU-Net (no commands in the virtualenv, or a command fails) a line says why and ours is still timed.

Setup (torch pinned in the second install too, or pip upgrades it to a CUDA build for the newest torchvision):
       python3 -m venv /tmp/nnunet-venv && /tmp/nnunet-venv/bin/pip install torch==2.13.0 &&
       /tmp/nnunet-venv/bin/pip install nnunetv2 torch==2.13.0
Usage: .venv/bin/python bench/bench_nnunet_compare.py [--cases 12] [--shape 128 128 64] [--nnunet-venv PATH]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from storage.harmonize import normalize_intensity, resample_volume
from storage.ingest_record import CaseRecord, IngestRecord
from storage.preprocess import PreprocessPlan, plan_for, preprocess_case
from storage.raw_dataset import RawCase, load_raw_dataset
from storage.readers import read_volume
from storage.synthetic import CENTERS, write_center_dataset
from storage.task_store import TaskStore
from storage.verify import CheckedCase, check_case

DATASET_ID = 501
DATASET_FOLDER = f"Dataset{DATASET_ID}_SynthA"
NNUNET_COMMANDS = ("nnUNetv2_extract_fingerprint", "nnUNetv2_plan_experiment", "nnUNetv2_preprocess")
COMPARABLE = "fingerprint + resampling + normalization (plan steps excluded)"


def emit(**fields: Any) -> None:
    print(json.dumps({"bench": "nnunet_compare", **fields}), flush=True)


def set_itk_threads(threads: int) -> None:
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)


def parallel_map(function: Callable, items: Iterable, processes: int, itk_threads: int) -> list:
    """`function` over `items` here (1 process) or in a pool of spawned processes, as nnU-Net's `-np`."""
    if processes == 1:
        return [function(item) for item in items]
    context = get_context("spawn")
    with ProcessPoolExecutor(
        processes, mp_context=context, initializer=set_itk_threads, initargs=(itk_threads,)
    ) as pool:
        return list(pool.map(function, items))


def checked_case(case: RawCase, labels: dict[int, str], root: Path) -> CheckedCase:
    checked, problems = check_case(case, labels, root)
    if checked is None:
        raise RuntimeError(f"benchmark case {case.case_id} failed verification: {problems}")
    return checked


def harmonize_case(case: CaseRecord, plan: PreprocessPlan) -> list[int]:
    """What `preprocess_case` does before slicing: read, normalize, resample image and label map."""
    image = read_volume(Path(case.image))
    label = read_volume(Path(case.label), dtype=np.int32)
    normalized = resample_volume(
        normalize_intensity(image.array, plan.normalization), image.spacing, plan.target_spacing
    )
    label_map = resample_volume(label.array.astype(np.uint8), label.spacing, plan.target_spacing, label=True)
    if normalized.shape != label_map.shape:
        raise RuntimeError(f"{case.case}: image {normalized.shape} and label {label_map.shape} differ")
    return list(normalized.shape)


def timed(function: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    result = function()
    return result, time.perf_counter() - start


def run_ours(
    folder: Path, processes: int, target: tuple[float, float, float], resolution: int, itk_threads: int
) -> tuple[float, IngestRecord, PreprocessPlan]:
    """Time our steps; emit one line each; return the comparable seconds, the ingest record and the plan."""
    dataset = load_raw_dataset(folder)
    common = {"side": "ours", "processes": processes, "cases": len(dataset.cases), "itk_threads": itk_threads}
    check = partial(checked_case, labels=dataset.labels, root=folder)

    def fingerprint_dataset() -> IngestRecord:
        checked = parallel_map(check, dataset.cases, processes, itk_threads)
        return IngestRecord.from_checked(dataset, folder, checked, [], secret=b"bench")

    record, fingerprint_s = timed(fingerprint_dataset)
    emit(**common, step="fingerprint", seconds=round(fingerprint_s, 2))
    plan, plan_s = timed(lambda: dataclasses.replace(plan_for(record, resolution), target_spacing=target))
    emit(**common, step="plan", seconds=round(plan_s, 4))
    harmonize = partial(harmonize_case, plan=plan)
    shapes, harmonize_s = timed(lambda: parallel_map(harmonize, record.cases, processes, itk_threads))
    emit(
        **common,
        step="resample_normalize",
        seconds=round(harmonize_s, 2),
        target_spacing_ras=list(plan.target_spacing),
        shape_ras=shapes[0],
    )
    return fingerprint_s + harmonize_s, record, plan


def run_ours_full(
    record: IngestRecord, plan: PreprocessPlan, store_path: Path, resolution: int, itk_threads: int
) -> None:
    """Reference: the full per-case recipe (slicing + Zarr writing included), sequentially into a fresh store."""
    store = TaskStore.open(str(store_path), resolution, create=True)
    cases = record.cases
    summaries, seconds = timed(lambda: [s for c in cases for s in preprocess_case(store, record.dataset, c, plan)])
    emit(
        side="ours",
        step="preprocess_case_full",
        processes=1,
        cases=len(cases),
        itk_threads=itk_threads,
        resolution=resolution,
        slices=sum(len(s["indices"]) for s in summaries),
        seconds=round(seconds, 2),
    )


def nnunet_missing(venv: Path) -> str | None:
    """Why the nnU-Net side cannot run, or None."""
    missing = [c for c in NNUNET_COMMANDS if not (venv / "bin" / c).is_file()]
    if missing:
        return f"{venv}/bin lacks {', '.join(missing)} (create it as this script's docstring says)"
    return None


def nnunet_version(venv: Path) -> str:
    code = "import importlib.metadata as m; print(m.version('nnunetv2'))"
    return subprocess.run([str(venv / "bin" / "python"), "-c", code], capture_output=True, text=True).stdout.strip()


def run_nnunet_command(venv: Path, arguments: list[str], env: dict[str, str], log: Path) -> float:
    """Seconds one nnU-Net command takes; its output goes to `log`; a failure raises with its last lines."""
    start = time.perf_counter()
    with log.open("a") as output:
        code = subprocess.run([str(venv / "bin" / arguments[0]), *arguments[1:]], env=env, stdout=output, stderr=output)
    seconds = time.perf_counter() - start
    if code.returncode != 0:
        tail = log.read_text()[-1500:]
        raise RuntimeError(f"{' '.join(arguments)} exited with {code.returncode}: {tail}")
    return seconds


def run_nnunet(venv: Path, env: dict[str, str], processes: int, target: tuple[float, ...], work: Path) -> float:
    """Time nnU-Net's three commands; emit one line each; return the comparable seconds."""
    log = work / f"nnunet-np{processes}.log"
    steps = {
        "fingerprint": ["nnUNetv2_extract_fingerprint", "-d", str(DATASET_ID), "-np", str(processes), "--clean"],
        "plan": ["nnUNetv2_plan_experiment", "-d", str(DATASET_ID), "-overwrite_target_spacing"]
        + [str(t) for t in reversed(target)],
        "preprocess": ["nnUNetv2_preprocess", "-d", str(DATASET_ID), "-c", "3d_fullres", "-np", str(processes)],
    }
    seconds = {step: run_nnunet_command(venv, arguments, env, log) for step, arguments in steps.items()}
    plans = json.loads((Path(env["nnUNet_preprocessed"]) / DATASET_FOLDER / "nnUNetPlans.json").read_text())
    fullres = plans["configurations"]["3d_fullres"]
    preprocessed = sorted(
        (Path(env["nnUNet_preprocessed"]) / DATASET_FOLDER / fullres["data_identifier"]).glob("*.pkl")
    )
    for step, arguments in steps.items():
        extra = {}
        if step == "preprocess":
            extra = {"target_spacing_ras": fullres["spacing"][::-1], "cases_written": len(preprocessed)}
        emit(
            side="nnunet",
            step=step,
            processes=processes,
            command=" ".join(arguments),
            seconds=round(seconds[step], 2),
            **extra,
        )
    return seconds["fingerprint"] + seconds["preprocess"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", type=int, default=12)
    parser.add_argument("--shape", type=int, nargs=3, default=(128, 128, 64), help="grid at 3 mm slices (x y z)")
    parser.add_argument("--target-spacing", type=float, nargs=3, default=(1.0, 1.0, 2.0), help="mm, RAS x y z")
    parser.add_argument("--processes", type=int, nargs="+", default=(1, 2))
    parser.add_argument("--resolution", type=int, default=256, help="store resolution of the full-recipe reference")
    parser.add_argument("--itk-threads", type=int, default=1, help="SimpleITK threads in each of our processes")
    parser.add_argument("--nnunet-venv", type=Path, default=Path("/tmp/nnunet-venv"))
    args = parser.parse_args()
    target = tuple(args.target_spacing)
    set_itk_threads(args.itk_threads)
    missing = nnunet_missing(args.nnunet_venv)
    with tempfile.TemporaryDirectory(prefix="bench-nnunet-") as folder:
        work = Path(folder)
        raw = work / "nnUNet_raw" / DATASET_FOLDER
        raw.parent.mkdir()
        source, generate_s = timed(
            lambda: write_center_dataset(
                work / "synth", CENTERS[0], n_cases=args.cases, seed=0, shape=tuple(args.shape)
            )
        )
        source.rename(raw)
        emit(
            step="setup",
            cases=args.cases,
            shape=list(CENTERS[0].grid(tuple(args.shape))),
            spacing_ras=list(CENTERS[0].spacing),
            target_spacing_ras=list(target),
            source_mb=round(sum(p.stat().st_size for p in raw.rglob("*.nii.gz")) / 1e6, 1),
            generate_seconds=round(generate_s, 1),
            python=platform.python_version(),
            cpus=os.cpu_count(),
            sitk=sitk.Version.VersionString(),
            nnunetv2=None if missing else nnunet_version(args.nnunet_venv),
        )
        env = {
            **os.environ,
            "nnUNet_raw": str(raw.parent),
            "nnUNet_preprocessed": str(work / "nnUNet_preprocessed"),
            "nnUNet_results": str(work / "nnUNet_results"),
        }
        if missing:
            emit(side="nnunet", available=False, reason=missing)
        else:
            startup = run_nnunet_command(args.nnunet_venv, [NNUNET_COMMANDS[0], "-h"], env, work / "startup.log")
            emit(side="nnunet", step="startup", command=f"{NNUNET_COMMANDS[0]} -h", seconds=round(startup, 2))
        for processes in args.processes:
            ours_s, record, plan = run_ours(raw, processes, target, args.resolution, args.itk_threads)
            if missing:
                continue
            try:
                nnunet_s = run_nnunet(args.nnunet_venv, env, processes, target, work)
            except RuntimeError as error:
                missing = str(error)
                emit(side="nnunet", available=False, reason=missing)
                continue
            emit(
                step="comparable_total",
                processes=processes,
                cases=args.cases,
                steps=COMPARABLE,
                ours_seconds=round(ours_s, 2),
                nnunet_seconds=round(nnunet_s, 2),
                ratio_ours_over_nnunet=round(ours_s / nnunet_s, 3),
                within_2x=ours_s <= 2 * nnunet_s,
            )
        run_ours_full(record, plan, work / "store.zarr", args.resolution, args.itk_threads)


if __name__ == "__main__":
    main()
