"""A batch of concurrent requests that fails because of one request's slices answers the others: the failure goes
back to the request that caused it alone (issue: 12 of 50 valid requests got 500 beside one bad query)."""

from __future__ import annotations

import asyncio

import numpy as np
import torch

from promptseg.inference.predictor import Intensity, Predictor, Spacing, intensity_recipe
from promptseg.nets.factory import build_model, model_config
from promptseg.serving.segmentation import SegmentJob, run_isolated

POISON = (7, 7)  # a query shape this predictor fails on, as a decoder-valid slice might fail in a real one


class FailingOnPoison(Predictor):
    def _to_grid(self, query: np.ndarray, modality: Intensity, name: str, spacing: Spacing) -> tuple:
        if query.shape == POISON:
            raise RuntimeError(f"{name}: the network failed on this slice")
        return super()._to_grid(query, modality, name, spacing)


def test_one_bad_slice_fails_only_its_own_request() -> None:
    torch.manual_seed(0)
    predictor = FailingOnPoison(build_model(model_config("tiny", 64, 8)))
    rng = np.random.default_rng(0)
    image = rng.random((32, 32)).astype(np.float32)
    recipe = intensity_recipe("MR", None)
    encodings = predictor.encode_labels([image], {"1": [(image > 0.5).astype(np.uint8)]}, recipe, 1, None)
    queries = [[rng.random((32, 32)).astype(np.float32)], [np.zeros(POISON, np.float32)], [image]]
    jobs = [SegmentJob("task", predictor, encodings, slices, recipe) for slices in queries]
    assert len({job.batch_key for job in jobs}) == 1  # one forward pass unless it fails

    results = asyncio.run(run_isolated(jobs))

    assert isinstance(results[1], RuntimeError) and "queries[0]" in str(results[1])
    for job, result in zip((jobs[0], jobs[2]), (results[0], results[2]), strict=True):
        (alone,) = asyncio.run(run_isolated([job]))
        assert np.allclose(result["1"][0].probability, alone["1"][0].probability, atol=1e-6)
