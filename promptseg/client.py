"""A typed Python client (httpx) for the PromptSeg HTTP API."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from promptseg.api_models import Health, ModelInfo, SegmentResponse


class PromptSegClient:
    def __init__(self, base_url: str, timeout: float = 120.0) -> None:
        self._http = httpx.Client(base_url=base_url, timeout=timeout)

    def __enter__(self) -> PromptSegClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self._http.close()

    def healthz(self) -> Health:
        return Health.model_validate(self._get("/healthz"))

    def model_info(self) -> ModelInfo:
        return ModelInfo.model_validate(self._get("/v1/model"))

    def segment(
        self,
        prompt_images: list[Path],
        prompt_masks: list[Path],
        queries: list[Path],
        modality: str = "CT",
        threshold: float = 0.5,
    ) -> SegmentResponse:
        files = [
            (field, (Path(p).name, Path(p).read_bytes()))
            for field, paths in (("prompt_images", prompt_images), ("prompt_masks", prompt_masks), ("queries", queries))
            for p in paths
        ]
        response = self._http.post("/v1/segment", files=files, data={"modality": modality, "threshold": str(threshold)})
        response.raise_for_status()
        return SegmentResponse.model_validate(response.json())

    def _get(self, path: str) -> dict:
        response = self._http.get(path)
        response.raise_for_status()
        return response.json()


def decode_mask(png_base64: str) -> np.ndarray:
    """A {0, 1} mask from a response's base64 PNG."""
    return (np.asarray(Image.open(io.BytesIO(base64.b64decode(png_base64)))) > 0).astype(np.uint8)
