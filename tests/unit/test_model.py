"""The PromptSeg network (contract 2): every size, prompt-order invariance, cached encodings, limits, bottleneck,
configurable priors, the token-path ablation, the intensity log-ratio, bf16 autocast, torch.compile, SAM ViT-B
weights and a one-task overfit."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from promptseg.evaluation.metrics import dice_score
from promptseg.nets.checkpoint import CONFIG, load_model, save_model
from promptseg.nets.factory import build_model, config_from_dict, load_pretrained_encoder, model_config
from promptseg.nets.losses import segmentation_loss
from promptseg.nets.model import (
    INTENSITY_BINS,
    PRIOR_NAMES,
    SIZES,
    PromptSeg,
    PromptSegConfig,
    intensity_log_ratio,
    tokens_zeroed,
)
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


def _tiny(priors: tuple[str, ...] = PRIOR_NAMES) -> PromptSeg:
    """The tiny network with the `network` fixture's weights (parameters do not depend on the priors)."""
    torch.manual_seed(0)
    return build_model(model_config("tiny", R, n_max=64, priors=priors)).eval()


def test_priors_are_a_validated_config_option_that_old_configs_lack() -> None:
    assert model_config("tiny", R).priors == PRIOR_NAMES == ("prototypes", "intensity", "location")
    assert model_config("tiny", R, priors=["location", "prototypes"]).priors == ("prototypes", "location")
    assert model_config("tiny", R, priors=()).priors == ()
    for bad in (("prototypes", "edges"), "intensity"):
        with pytest.raises(ValueError, match=r"allowed: \['prototypes', 'intensity', 'location'\]|not the string"):
            model_config("tiny", R, priors=bad)
    with pytest.raises(ValueError, match="unknown priors"):
        PromptSegConfig.from_dict({"size": "tiny", "priors": ["shape"]})
    with pytest.raises(ValueError, match="UniverSeg baseline has none"):
        model_config("universeg", R, priors=("location",))
    subset = model_config("tiny", R, priors=("intensity",))
    assert config_from_dict(json.loads(json.dumps(subset.to_dict()))) == subset  # a JSON list becomes the tuple
    old = {k: v for k, v in model_config("tiny", R).to_dict().items() if k != "priors"}
    assert config_from_dict(old).priors == PRIOR_NAMES


def test_a_checkpoint_without_priors_in_its_config_loads_with_all_three(tmp_path: Path) -> None:
    save_model(_tiny(), tmp_path)
    recorded = json.loads((tmp_path / CONFIG).read_text())
    assert recorded["priors"] == list(PRIOR_NAMES)
    del recorded["priors"]
    (tmp_path / CONFIG).write_text(json.dumps(recorded))
    loaded = load_model(tmp_path)
    assert loaded.config.priors == PRIOR_NAMES
    inputs = _inputs(1, 3, 2)
    with torch.no_grad():
        torch.testing.assert_close(loaded(*inputs), _tiny()(*inputs))


def test_every_subset_of_priors_runs_keeps_parameter_shapes_and_stays_order_free() -> None:
    full = _tiny()
    images, masks, queries = _inputs(2, 5, 2)
    order = torch.randperm(5)
    with torch.no_grad():
        reference = full(images, masks, queries)
        for priors in [(), ("prototypes",), ("intensity",), ("location",), ("intensity", "location")]:
            net = _tiny(priors)
            assert {k: v.shape for k, v in net.state_dict().items()} == {
                k: v.shape for k, v in full.state_dict().items()
            }
            logits = net(images, masks, queries)
            assert torch.isfinite(logits).all() and not torch.allclose(logits, reference, atol=1e-4)
            torch.testing.assert_close(net(images[:, order], masks[:, order], queries), logits, atol=1e-5, rtol=1e-4)


def test_a_prior_left_out_does_not_reach_the_output() -> None:
    """Changing a prior's part of the prompt encoding changes nothing once that prior is off (and something while
    it is on)."""
    images, masks, queries = _inputs(1, 3, 2)
    generator = torch.Generator().manual_seed(1)
    fields = {"prototypes": "prototypes", "intensity": "intensity_log_ratio", "location": "mean_mask"}
    for prior, field in fields.items():
        for priors, changes in ((PRIOR_NAMES, True), (tuple(p for p in PRIOR_NAMES if p != prior), False)):
            net = _tiny(priors)
            with torch.no_grad():
                encoding = net.encode_prompts(images, masks)
                value = getattr(encoding, field)
                other = encoding._replace(**{field: torch.rand(value.shape, generator=generator) * 2 - 1})
                changed = not torch.allclose(net.segment(encoding, queries), net.segment(other, queries))
            assert changed == changes, (prior, priors)


def test_tokens_zeroed_leaves_only_the_priors_to_the_head(network: torch.nn.Module) -> None:
    images, masks, queries = _inputs(1, 4, 2)
    ablated = tokens_zeroed(network)
    assert ablated is not network and ablated.zero_tokens and not network.zero_tokens and not ablated.training
    with torch.no_grad():
        normal, zeroed = network(images, masks, queries), ablated(images, masks, queries)
        assert torch.isfinite(zeroed).all() and not torch.allclose(zeroed, normal, atol=1e-3)
        order = torch.randperm(4)
        torch.testing.assert_close(ablated(images[:, order], masks[:, order], queries), zeroed, atol=1e-5, rtol=1e-4)
        perturbed = tokens_zeroed(network)
        for module in (*perturbed.fusion, perturbed.query_embed, perturbed.head_norm):
            for parameter in module.parameters():
                parameter.add_(torch.randn_like(parameter))
        torch.testing.assert_close(perturbed(images, masks, queries), zeroed)
        perturbed.zero_tokens = False  # the same perturbation does reach the normal path
        assert not torch.allclose(perturbed(images, masks, queries), normal, atol=1e-3)
        torch.testing.assert_close(network(images, masks, queries), normal)  # the original is untouched
        # without priors too, the ablation sees nothing of the prompts: only the query image reaches the head
        blind = tokens_zeroed(_tiny(()))
        torch.testing.assert_close(blind(images, masks, queries), blind(*_inputs(1, 2, 2)[:2], queries))
    with pytest.raises(ValueError, match="PromptSeg only"):
        tokens_zeroed(build_model(model_config("universeg", R)))


def test_intensity_log_ratio_favors_foreground_intensities(network: torch.nn.Module) -> None:
    images = torch.full((2, 1, R, R), 0.2)
    masks = torch.zeros(2, 1, R, R)
    images[:, :, :16, :16], masks[:, :, :16, :16] = 0.8, 1
    ratio = intensity_log_ratio(images, masks, 1)
    assert ratio.shape == (1, INTENSITY_BINS)
    fg, bg = round(0.8 * (INTENSITY_BINS - 1)), round(0.2 * (INTENSITY_BINS - 1))
    assert ratio[0, fg] > 2 and ratio[0, bg] < -2
    unseen = torch.tensor((2 * R * R - 2 * 256 + INTENSITY_BINS) / (2 * 256 + INTENSITY_BINS)).log()
    torch.testing.assert_close(ratio[0, 0], unseen)  # Laplace smoothing: the pixel counts' ratio, not 0
    torch.testing.assert_close(intensity_log_ratio(images.flip(0), masks.flip(0), 1), ratio)  # order-free
    with torch.no_grad():
        encoded = network.encode_prompts(images[None], masks[None]).intensity_log_ratio
    torch.testing.assert_close(encoded, ratio)


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
