"""The PromptSeg network contract (model I/O): shapes, prompt-order invariance, cached encodings, limits, loss."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from promptseg.baselines import mean_prompt_mask
from promptseg.losses import segmentation_loss
from promptseg.metrics import dice_score
from promptseg.model import PromptSegConfig, build_model, model_config


@pytest.fixture(scope="module")
def network() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(model_config("tiny", 64, n_max=64)).eval()


def _inputs(b: int, n: int, q: int, r: int = 64) -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(n * 10 + q)
    images = torch.rand(b, n, 1, r, r, generator=generator)
    masks = (torch.rand(b, n, 1, r, r, generator=generator) > 0.7).float()
    return images, masks, torch.rand(b, q, 1, r, r, generator=generator)


def test_output_shape_for_any_prompt_count(network: torch.nn.Module) -> None:
    for n in (1, 5, 64):
        with torch.no_grad():
            assert network(*_inputs(2, n, 3)).shape == (2, 3, 1, 64, 64)


def test_output_does_not_depend_on_prompt_order(network: torch.nn.Module) -> None:
    images, masks, queries = _inputs(2, 6, 2)
    order = torch.randperm(6)
    with torch.no_grad():
        torch.testing.assert_close(
            network(images, masks, queries), network(images[:, order], masks[:, order], queries), atol=1e-5, rtol=1e-4
        )


def test_cached_encoding_matches_full_forward_per_query(network: torch.nn.Module) -> None:
    images, masks, queries = _inputs(1, 4, 5)
    with torch.no_grad():
        full = network(images, masks, queries)
        encoding = network.encode_prompts(images, masks)
        one_by_one = torch.cat([network.segment(encoding, queries[:, i : i + 1]) for i in range(5)], dim=1)
    torch.testing.assert_close(one_by_one, full, atol=1e-5, rtol=1e-4)


def test_contract_violations_raise_clear_errors(network: torch.nn.Module) -> None:
    images, masks, queries = _inputs(1, 2, 1)
    with pytest.raises(ValueError, match=r"queries must have shape \(B, N, 1, 64, 64\)"):
        network(images, masks, queries[..., :32, :32])
    with pytest.raises(ValueError, match="between 1 and 64"):
        network(*_inputs(1, 65, 1)[:2], queries)
    with pytest.raises(ValueError, match="unknown model size"):
        model_config("huge", 64)
    with pytest.raises(ValueError, match="unknown model config keys"):
        PromptSegConfig.from_dict({"size": "tiny", "bogus": 1})


def test_loss_prefers_the_right_mask() -> None:
    target = torch.zeros(1, 1, 1, 16, 16)
    target[..., 4:12, 4:12] = 1
    right, wrong = (target * 20 - 10), (-target * 20 + 10)
    assert segmentation_loss(right, target) < 0.05 < 1.0 < segmentation_loss(wrong, target)


def test_metrics_and_baseline() -> None:
    a = np.zeros((8, 8), bool)
    a[:4] = True
    assert dice_score(a, a) == 1.0 and dice_score(a, ~a) == 0.0 and dice_score(~a & a, ~a & a) == 1.0
    masks = np.stack([np.full((1, 4, 4), v, np.float32) for v in (0, 1, 1)])
    assert np.allclose(mean_prompt_mask(masks, 2), 2 / 3) and mean_prompt_mask(masks, 2).shape == (2, 1, 4, 4)
