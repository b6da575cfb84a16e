"""`promptseg query` (through the HTTP endpoint) and `promptseg segment` (in-process, through the Predictor):
prompt pairs and queries from files in, mask PNGs and overlay PNGs out (and uncertainty maps, in-process)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from promptseg.client import PromptSegClient, decode_mask
from promptseg.evaluate import overlay_png
from promptseg.image_io import binary_mask, decode_image, encode_png
from promptseg.predictor import Predictor
from storage.harmonize import NormalizationParams, normalize_intensity


def _write_outputs(queries: list[Path], masks: list[np.ndarray], out: Path, modality: str, title: str) -> list[dict]:
    written = []
    for path, mask in zip(queries, masks, strict=True):
        mask_path = out / f"{path.stem}_mask.png"
        mask_path.write_bytes(encode_png(mask))
        image = normalize_intensity(decode_image(path.name, path.read_bytes()), NormalizationParams(modality))
        overlay_path = out / f"{path.stem}_overlay.png"
        overlay_png(image, None, mask, overlay_path, f"{path.name} ({title})")
        written.append(
            {
                "query": str(path),
                "mask": str(mask_path),
                "overlay": str(overlay_path),
                "foreground_fraction": float(mask.mean()),
            }
        )
    return written


def query_files(
    url: str, prompt_images: list[Path], prompt_masks: list[Path], queries: list[Path], out: Path, modality: str = "CT"
) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    with PromptSegClient(url) as client:
        response = client.segment(prompt_images, prompt_masks, queries, modality=modality)
    masks = [decode_mask(result.mask_png_base64) for result in response.masks]
    return {
        "model_version": response.model_version,
        "request_id": response.request_id,
        "outputs": _write_outputs(queries, masks, out, modality, f"model v{response.model_version}"),
        "timings_ms": response.timings_ms,
    }


def segment_files(
    predictor: Predictor,
    prompt_images: list[Path],
    prompt_masks: list[Path],
    queries: list[Path],
    out: Path,
    modality: str = "CT",
    title: str = "local",
) -> dict:
    """Segment with an in-process predictor; also writes each query's uncertainty map as a grey PNG."""
    out.mkdir(parents=True, exist_ok=True)

    def read(paths: list[Path]) -> list[np.ndarray]:
        return [decode_image(str(path), path.read_bytes()) for path in paths]

    masks = [binary_mask(str(path), array) for path, array in zip(prompt_masks, read(prompt_masks), strict=True)]
    task = predictor.encode_task(read(prompt_images), masks, modality)
    results = predictor.segment(task, read(queries), modality)
    outputs = _write_outputs(queries, [r.mask for r in results], out, modality, title)
    for output, path, result in zip(outputs, queries, results, strict=True):
        uncertainty_path = out / f"{path.stem}_uncertainty.png"
        Image.fromarray(np.clip(result.uncertainty * 255, 0, 255).astype(np.uint8)).save(uncertainty_path)
        output |= {"uncertainty": str(uncertainty_path), "mean_uncertainty": float(result.uncertainty.mean())}
    return {"n_prompts": task.n_prompts, "ensemble": task.members, "outputs": outputs}
