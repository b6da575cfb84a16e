"""The PromptSeg network (contract 2): every size, prompt-order invariance, cached encodings, limits, bottleneck,
bf16 autocast, torch.compile, SAM ViT-B weights and a one-task overfit."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

from promptseg.evaluation.metrics import dice_score
from promptseg.nets.factory import build_model, config_from_dict, load_pretrained_encoder, model_config
from promptseg.nets.losses import segmentation_loss
from promptseg.nets.model import SIZES, PromptSegConfig
from promptseg.nets.pretrained import PretrainedWeightsError
from promptseg.training.synthetic_tasks import synthetic_batch

R = 64


@pytest.fixture(scope="module")
def network() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(model_config("tiny", R, n_max=64)).eval()


def _inputs(b: int, n: int, q: int, r: int = R) -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(n * 10 + q)
    images = torch.rand(b, n, 1, r, r, generator=generator)
    masks = (torch.rand(b, n, 1, r, r, generator=generator) > 0.7).float()
    return images, masks, torch.rand(b, q, 1, r, r, generator=generator)


@pytest.mark.parametrize("size", [pytest.param(s, marks=pytest.mark.slow) if s == "base" else s for s in SIZES])
def test_every_size_maps_the_contract_shapes_and_dtypes(size: str) -> None:
    torch.manual_seed(0)
    net = build_model(model_config(size, R)).eval()
    with torch.no_grad():
        encoding = net.encode_prompts(*_inputs(2, 3, 2)[:2])
        logits = net.segment(encoding, _inputs(2, 3, 2)[2])
    assert logits.shape == (2, 2, 1, R, R) and logits.dtype == torch.float32 and torch.isfinite(logits).all()
    assert encoding.keys.shape == (2, net.config.fusion_depth, 3 * 16 * 16, net.config.dim)
    assert config_from_dict(net.config.to_dict()) == net.config


def test_base_is_the_papers_size() -> None:
    config = model_config("base", 256)
    assert (config.dim, config.encoder_depth, config.heads, config.fusion_depth, config.patch_size) == (
        768,
        12,
        12,
        12,
        16,
    )


def test_one_prompt_and_n_max_prompts_work(network: torch.nn.Module) -> None:
    for n in (1, 64):
        with torch.no_grad():
            assert network(*_inputs(1, n, 2)).shape == (1, 2, 1, R, R)


def test_output_does_not_depend_on_prompt_order(network: torch.nn.Module) -> None:
    images, masks, queries = _inputs(2, 6, 2)
    order = torch.randperm(6)
    with torch.no_grad():
        torch.testing.assert_close(
            network(images, masks, queries), network(images[:, order], masks[:, order], queries), atol=1e-5, rtol=1e-4
        )


def test_cached_encoding_matches_the_uncached_path(network: torch.nn.Module) -> None:
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
    with pytest.raises(ValueError, match="between 1 and 64"):
        network(images[:, :0], masks[:, :0], queries)
    with pytest.raises(ValueError, match="prompt_masks must be binary"):
        network(images, masks * 0.5, queries)
    with pytest.raises(ValueError, match="queries contains NaN"):
        network(images, masks, queries.masked_fill(queries > 0.5, float("nan")))
    with pytest.raises(ValueError, match="same \\(B, N\\)"):
        network(images, masks[:, :1], queries)
    with pytest.raises(ValueError, match="unknown model size"):
        model_config("huge", R)
    with pytest.raises(ValueError, match="unknown model config keys"):
        PromptSegConfig.from_dict({"size": "tiny", "bogus": 1})


def test_bottleneck_samples_in_training_and_is_deterministic_in_eval() -> None:
    torch.manual_seed(0)
    net = build_model(model_config("tiny", R, bottleneck=True))
    inputs = _inputs(2, 3, 1)
    net.train()
    (first, kl), second = net(*inputs, return_kl=True), net(*inputs)
    assert kl.shape == (2,) and (kl > 0).all() and not torch.allclose(first, second)
    net.eval()
    with torch.no_grad():
        torch.testing.assert_close(net(*inputs), net(*inputs))
    plain = build_model(model_config("tiny", R))
    assert (plain(*inputs, return_kl=True)[1] == 0).all()


def test_bf16_autocast_path_runs(network: torch.nn.Module) -> None:
    """The GPU path (bf16 autocast) exercised on the CPU's bf16 kernels: finite and close to float32."""
    inputs = _inputs(1, 3, 2)
    with torch.no_grad():
        reference = torch.sigmoid(network(*inputs))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = torch.sigmoid(network(*inputs).float())
    assert torch.isfinite(low).all() and (low - reference).abs().mean() < 0.05


@pytest.mark.slow
def test_torch_compile_matches_eager(network: torch.nn.Module) -> None:
    compiled = torch.compile(network, backend="aot_eager")
    inputs = _inputs(1, 2, 1)
    with torch.no_grad():
        torch.testing.assert_close(compiled(*inputs), network(*inputs), atol=1e-4, rtol=1e-4)


def _sam_vit_b_state_dict(grid: int = 64) -> dict[str, torch.Tensor]:
    """A random state dict in SAM's ViT-B layout (1024² input: 64×64 patch grid), with neck and decoder keys."""
    generator = torch.Generator().manual_seed(0)
    state = {
        "image_encoder.patch_embed.proj.weight": torch.randn(768, 3, 16, 16, generator=generator) * 0.02,
        "image_encoder.patch_embed.proj.bias": torch.zeros(768),
        "image_encoder.pos_embed": torch.randn(1, grid, grid, 768, generator=generator) * 0.02,
        "image_encoder.neck.0.weight": torch.zeros(256, 768, 1, 1),
        "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix": torch.zeros(2, 128),
    }
    for i in range(12):
        rel = 2 * (grid if i in (2, 5, 8, 11) else 14) - 1
        prefix = f"image_encoder.blocks.{i}."
        for name, shape in {
            "norm1.weight": (768,),
            "norm1.bias": (768,),
            "attn.qkv.weight": (2304, 768),
            "attn.qkv.bias": (2304,),
            "attn.proj.weight": (768, 768),
            "attn.proj.bias": (768,),
            "attn.rel_pos_h": (rel, 64),
            "attn.rel_pos_w": (rel, 64),
            "norm2.weight": (768,),
            "norm2.bias": (768,),
            "mlp.lin1.weight": (3072, 768),
            "mlp.lin1.bias": (3072,),
            "mlp.lin2.weight": (768, 3072),
            "mlp.lin2.bias": (768,),
        }.items():
            state[prefix + name] = torch.randn(*shape, generator=generator) * 0.02
    return state


@pytest.mark.slow
def test_sam_vit_b_weights_load_into_base_and_mismatches_fail_clearly(tmp_path: Path) -> None:
    state = _sam_vit_b_state_dict()
    path = tmp_path / "sam_vit_b.pth"
    torch.save(state, path)
    base = build_model(model_config("base", 256)).eval()
    ignored = load_pretrained_encoder(base, path)
    encoder = base.image_encoder
    assert (
        "image_encoder.neck.0.weight" in ignored
        and "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix" in ignored
    )
    torch.testing.assert_close(
        encoder.patch_embed.proj.weight, state["image_encoder.patch_embed.proj.weight"].sum(1, keepdim=True)
    )
    torch.testing.assert_close(encoder.blocks[7].mlp.lin1.weight, state["image_encoder.blocks.7.mlp.lin1.weight"])
    assert encoder.pos_embed.shape == (1, 16, 16, 768) and encoder.blocks[2].attn.rel_pos_h.shape == (31, 64)
    with torch.no_grad():
        assert base(*_inputs(1, 1, 1, 256)).shape == (1, 1, 1, 256, 256)

    tiny = build_model(model_config("tiny", 256))
    with pytest.raises(
        PretrainedWeightsError,
        match=re.escape("sam_vit_b.pth: image_encoder.pos_embed has shape (1, 64, 64, 768), this encoder needs (1, 16"),
    ):
        load_pretrained_encoder(tiny, path)
    del state["image_encoder.blocks.11.mlp.lin2.bias"]
    torch.save(state, path)
    missing = re.escape("missing encoder weight image_encoder.blocks.11.mlp.lin2.bias")
    with pytest.raises(PretrainedWeightsError, match=missing):
        load_pretrained_encoder(base, path)
    (tmp_path / "garbage.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(PretrainedWeightsError, match=re.escape("garbage.pth: not a readable state dict")):
        load_pretrained_encoder(base, tmp_path / "garbage.pth")
    with pytest.raises(PretrainedWeightsError, match="no such file"):
        load_pretrained_encoder(base, tmp_path / "absent.pth")


@pytest.mark.slow
def test_tiny_model_overfits_one_synthetic_task() -> None:
    """The tiny network fits one fixed synthetic episode (prompts and queries are different instances)."""
    torch.manual_seed(0)
    batch = synthetic_batch(1, 4, 2, R, torch.Generator().manual_seed(3))
    net = build_model(model_config("tiny", R)).train()
    optimizer = torch.optim.AdamW(net.parameters(), lr=3e-3)
    for _ in range(150):
        loss = segmentation_loss(
            net(batch["prompt_images"], batch["prompt_masks"], batch["queries"]), batch["query_masks"]
        )
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    net.eval()
    with torch.no_grad():
        prediction = net(batch["prompt_images"], batch["prompt_masks"], batch["queries"]) > 0
    dice = np.mean(
        [dice_score(p[0].numpy(), t[0].numpy()) for p, t in zip(prediction[0], batch["query_masks"][0], strict=True)]
    )
    assert dice > 0.9, f"Dice {dice:.3f} after 150 steps"


def test_loss_prefers_the_right_mask() -> None:
    target = torch.zeros(1, 1, 1, 16, 16)
    target[..., 4:12, 4:12] = 1
    right, wrong = (target * 20 - 10), (-target * 20 + 10)
    assert segmentation_loss(right, target) < 0.05 < 1.0 < segmentation_loss(wrong, target)
