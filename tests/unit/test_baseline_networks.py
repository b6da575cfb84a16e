"""The baseline networks: the UniverSeg-style in-context net (contract 2) and the supervised MONAI UNet."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from promptseg.evaluation.metrics import dice_score
from promptseg.evaluation.supervised import fit_supervised_unet, predict_supervised
from promptseg.evaluation.supervised_cache import training_slices
from promptseg.nets.factory import build_model, model_config
from promptseg.nets.losses import segmentation_loss
from promptseg.nets.universeg import UniverSeg, UniverSegConfig
from storage.task_store import SliceRef, Task

R = 32


@pytest.fixture(scope="module")
def network() -> UniverSeg:
    torch.manual_seed(0)
    return UniverSeg(UniverSegConfig(resolution=R, width=16)).eval()


def _inputs(b: int, n: int, q: int, r: int = R) -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(n * 10 + q)
    images = torch.rand(b, n, 1, r, r, generator=generator)
    masks = (torch.rand(b, n, 1, r, r, generator=generator) > 0.7).float()
    return images, masks, torch.rand(b, q, 1, r, r, generator=generator)


def _ellipses(rng: np.random.Generator, m: int, r: int) -> tuple[np.ndarray, np.ndarray]:
    """m slices: a bright ellipse of random size, position and orientation on a textured background."""
    yy, xx = np.mgrid[:r, :r] / r
    images, masks = [], []
    for _ in range(m):
        cy, cx = rng.uniform(0.3, 0.7, 2)
        ay, ax = rng.uniform(0.1, 0.25, 2)
        angle = rng.uniform(0, np.pi)
        dy, dx = yy - cy, xx - cx
        u, v = dy * np.cos(angle) + dx * np.sin(angle), -dy * np.sin(angle) + dx * np.cos(angle)
        mask = (u / ay) ** 2 + (v / ax) ** 2 < 1
        phase = rng.uniform(0, 2 * np.pi, 2)
        texture = 0.15 * np.sin(12 * yy + phase[0]) * np.cos(9 * xx + phase[1])
        image = 0.3 + texture + 0.1 * rng.standard_normal((r, r)) + 0.4 * mask
        images.append(np.clip(image, 0, 1)[None])
        masks.append(mask[None])
    return np.stack(images).astype(np.float32), np.stack(masks).astype(np.float32)


def test_universeg_output_shape_for_one_and_n_max_prompts(network: UniverSeg) -> None:
    for n in (1, 64):
        with torch.no_grad():
            assert network(*_inputs(2, n, 3)).shape == (2, 3, 1, R, R)


def test_universeg_output_does_not_depend_on_prompt_order(network: UniverSeg) -> None:
    images, masks, queries = _inputs(2, 6, 2)
    order = torch.randperm(6, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(
            network(images, masks, queries), network(images[:, order], masks[:, order], queries), atol=1e-5, rtol=1e-4
        )


def test_universeg_forward_equals_segment_of_encoding(network: UniverSeg) -> None:
    images, masks, queries = _inputs(2, 3, 4)
    with torch.no_grad():
        full = network(images, masks, queries)
        encoding = network.encode_prompts(images, masks)
        one_by_one = torch.cat([network.segment(encoding, queries[:, i : i + 1]) for i in range(4)], dim=1)
        torch.testing.assert_close(network.segment(encoding, queries), full)
    torch.testing.assert_close(one_by_one, full, atol=1e-5, rtol=1e-4)


def test_universeg_contract_violations_raise(network: UniverSeg) -> None:
    images, masks, queries = _inputs(1, 2, 1)
    with pytest.raises(ValueError, match=r"queries must have shape \(B, N, 1, 32, 32\)"):
        network(images, masks, queries[..., :16, :16])
    with pytest.raises(ValueError, match="prompt_images must have shape"):
        network(images[:, :, :, :16], masks, queries)
    with pytest.raises(ValueError, match="must be binary"):
        network(images, masks * 0.5, queries)
    with pytest.raises(ValueError, match="between 1 and 64"):
        network(images[:, :0], masks[:, :0], queries)
    with pytest.raises(ValueError, match="between 1 and 64"):
        network(*_inputs(1, 65, 1)[:2], queries)
    with pytest.raises(ValueError, match="queries contains NaN"):
        network(images, masks, torch.full_like(queries, float("nan")))
    with pytest.raises(ValueError, match="prompt_images contains NaN"):
        network(torch.full_like(images, float("nan")), masks, queries)
    with pytest.raises(ValueError, match="must match the prompts' batch"):
        network(images, masks, queries.expand(2, -1, -1, -1, -1))
    with pytest.raises(ValueError, match="resolution must be divisible by 8"):
        UniverSeg(UniverSegConfig(resolution=36))


def test_universeg_config_round_trip_and_unknown_keys() -> None:
    config = UniverSegConfig(resolution=64, width=16)
    assert UniverSegConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match=r"unknown model config keys: \['bogus'\]"):
        UniverSegConfig.from_dict({"width": 16, "bogus": 1})


@pytest.mark.slow
def test_universeg_learns_a_task_in_context() -> None:
    """Trained on one task (fresh prompts and queries every step), it segments a fresh query from its prompts."""
    torch.manual_seed(0)
    net = UniverSeg(UniverSegConfig(resolution=R, width=16))
    optimizer = torch.optim.Adam(net.parameters(), lr=3e-3)
    rng = np.random.default_rng(0)
    for _ in range(120):
        images, masks = (torch.from_numpy(a).reshape(2, 5, 1, R, R) for a in _ellipses(rng, 10, R))
        loss = segmentation_loss(net(images[:, :4], masks[:, :4], images[:, 4:]), masks[:, 4:])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    images, masks = (torch.from_numpy(a)[None] for a in _ellipses(np.random.default_rng(99), 9, R))
    with torch.no_grad():
        logits = net.eval()(images[:, :4], masks[:, :4], images[:, 4:])
    dice = np.mean([dice_score(logits[0, i].numpy() > 0, masks[0, 4 + i].numpy()) for i in range(5)])
    assert dice > 0.8


@pytest.mark.slow
def test_supervised_unet_segments_unseen_slices() -> None:
    images, masks = _ellipses(np.random.default_rng(0), 20, 64)
    state = torch.random.get_rng_state()
    network = fit_supervised_unet(images[:16], masks[:16], steps=600)
    assert torch.equal(torch.random.get_rng_state(), state) and not network.training
    probabilities = predict_supervised(network, images[16:], batch_size=3)
    assert probabilities.shape == (4, 1, 64, 64) and probabilities.dtype == np.float32
    dice = np.mean([dice_score(p > 0.5, m) for p, m in zip(probabilities, masks[16:], strict=True)])
    assert dice > 0.8


def test_supervised_unet_is_deterministic_and_validates_input() -> None:
    images, masks = _ellipses(np.random.default_rng(1), 4, 32)
    first = predict_supervised(fit_supervised_unet(images, masks, steps=2, batch_size=2), images)
    second = predict_supervised(fit_supervised_unet(images, masks, steps=2, batch_size=2), images)
    np.testing.assert_array_equal(first, second)
    stopped = fit_supervised_unet(images, masks, steps=500, batch_size=2, validate_every=1, patience=1)
    assert stopped.trained_steps < 500  # the held-back loss stopped improving long before the cap
    with pytest.raises(ValueError, match="M ≥ 1"):
        fit_supervised_unet(images[:0], masks[:0])
    with pytest.raises(ValueError, match="must equal images shape"):
        fit_supervised_unet(images, masks[:3])


@pytest.mark.parametrize(("size", "bottleneck"), [("universeg", False), ("tiny", False), ("tiny", True)])
def test_every_parameter_gets_a_gradient_as_ddp_requires(size: str, bottleneck: bool) -> None:
    """DDP stops on parameters that take no part in the loss (the trainer's networks all run under DDP)."""
    network = build_model(model_config(size, 64, bottleneck=bottleneck)).train()
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(2, 3, 1, 64, 64, generator=generator)
    masks = (torch.rand(2, 3, 1, 64, 64, generator=generator) > 0.5).float()
    logits, kl = network(images, masks, torch.rand(2, 1, 1, 64, 64, generator=generator), return_kl=True)
    (logits.mean() + kl.mean()).backward()
    assert [name for name, p in network.named_parameters() if p.grad is None] == []


def _task(cases: dict[str, range]) -> Task:
    refs = tuple(SliceRef(case, i, i, 10) for case, indices in cases.items() for i in indices)
    return Task(dataset="d", label_value=1, label_name="organ", axis=2, slices=refs)


def test_supervised_reference_never_trains_on_a_query_or_its_neighbours() -> None:
    """Several cases: the UNet trains on the other cases only. One volume: each query's UNet trains on the other half
    of the structure's slices, every slice at least `min_gap` from the query; the two halves share nothing."""
    several = _task({"a": range(5), "b": range(5), "c": range(5)})
    queries = [SliceRef("a", 2, 2, 10), SliceRef("c", 0, 0, 10)]
    for refs in training_slices(several, queries, min_gap=3):
        assert refs and {r.case for r in refs} == {"b"}
    volume = _task({"only": range(20, 41)})
    queries = [SliceRef("only", i, i, 10) for i in range(15, 46)]  # empty queries may lie outside the structure
    per_query = training_slices(volume, queries, min_gap=3)
    for query, refs in zip(queries, per_query, strict=True):
        assert refs and min(abs(r.index - query.index) for r in refs) >= 3, query.index
    halves = {tuple(r.index for r in refs) for refs in per_query}
    assert len(halves) == 2 and not set.intersection(*(set(h) for h in halves))
