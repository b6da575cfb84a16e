"""`promptseg query`: send prompt pairs and queries to the endpoint, write mask PNGs and overlay PNGs."""

from __future__ import annotations

from pathlib import Path

from promptseg.client import PromptSegClient, decode_mask
from promptseg.evaluate import overlay_png
from promptseg.image_io import decode_image, encode_png
from storage.harmonize import NormalizationParams, normalize_intensity


def query_files(
    url: str, prompt_images: list[Path], prompt_masks: list[Path], queries: list[Path], out: Path, modality: str = "CT"
) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    with PromptSegClient(url) as client:
        response = client.segment(prompt_images, prompt_masks, queries, modality=modality)
    written = []
    for path, result in zip(queries, response.masks, strict=True):
        mask = decode_mask(result.mask_png_base64)
        mask_path = out / f"{path.stem}_mask.png"
        mask_path.write_bytes(encode_png(mask))
        image = normalize_intensity(decode_image(path.name, path.read_bytes()), NormalizationParams(modality))
        overlay_path = out / f"{path.stem}_overlay.png"
        overlay_png(image, None, mask, overlay_path, f"{path.name} (model v{response.model_version})")
        written.append(
            {
                "query": str(path),
                "mask": str(mask_path),
                "overlay": str(overlay_path),
                "foreground_fraction": result.foreground_fraction,
            }
        )
    return {
        "model_version": response.model_version,
        "request_id": response.request_id,
        "outputs": written,
        "timings_ms": response.timings_ms,
    }
