"""The PromptSeg network and its factory: contract 2 (model I/O), kept in this one module.

Contract::

    prompt_images (B, N, 1, R, R) float in [0, 1]     N from 1 to config.n_max
    prompt_masks  (B, N, 1, R, R) in {0, 1}
    queries       (B, Q, 1, R, R) float in [0, 1]
    → logits      (B, Q, 1, R, R)

R is the resolution recorded in the config (and in the task store the model was trained on).

Architecture (after PromptSeg, ICASSP 2025, with the prompt limits lifted):
- A ViT image encoder (patch embedding, learned 2D positions, Transformer blocks) shared by prompt images and
  queries. Prompt masks enter as a patch embedding added to their image's tokens; each prompt pair is then
  refined by its own blocks (attention within the pair only).
- Query tokens attend to themselves and to the tokens of all prompts (never the reverse). Prompts carry no
  index or order embedding and every reduction over prompts is a sum or an attention, so the output does not
  depend on prompt order and any N up to n_max works.
- A prototype prior, as in few-shot segmentation: the cosine similarity of each query token to the
  mask-averaged foreground and background features of the prompts feeds the fusion and the head.
- A light head: tokens → transposed-convolution unpatchify → a small convolution with the query image → logits.

`encode_prompts` is separate from `segment`: the encoding of a task is computed once and reused for any number
of queries (the predictor and the Serve app cache it).

This module imports only torch and numpy so that GPU benchmarks run from a bare checkout.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

SIZES: dict[str, dict[str, int]] = {
    "tiny": {"dim": 64, "heads": 4, "encoder_depth": 2, "prompt_depth": 1, "fusion_depth": 2},
    "small": {"dim": 192, "heads": 6, "encoder_depth": 6, "prompt_depth": 2, "fusion_depth": 4},
}
TOKEN_GRID = 16
INTENSITY_BINS = 64


@dataclass(frozen=True)
class PromptSegConfig:
    """Everything needed to rebuild the network; stored as JSON next to the weights."""

    size: str = "tiny"
    resolution: int = 256
    patch_size: int = 16
    dim: int = 64
    heads: int = 4
    encoder_depth: int = 2
    prompt_depth: int = 1
    fusion_depth: int = 2
    mlp_ratio: float = 4.0
    n_max: int = 64
    architecture: str = "promptseg"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> PromptSegConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown model config keys: {sorted(unknown)}")
        return cls(**data)


def model_config(size: str = "tiny", resolution: int = 256, n_max: int = 64) -> PromptSegConfig:
    """The named size at a resolution; patches are sized so that every image becomes a 16×16 token grid."""
    if size not in SIZES:
        raise ValueError(f"unknown model size {size!r}; choose one of {sorted(SIZES)}")
    if resolution % TOKEN_GRID:
        raise ValueError(f"resolution must be a multiple of {TOKEN_GRID}, got {resolution}")
    return PromptSegConfig(
        size=size, resolution=resolution, patch_size=resolution // TOKEN_GRID, n_max=n_max, **SIZES[size]
    )


class Attention(nn.Module):
    """Multi-head attention on torch's scaled_dot_product_attention; cross-attention when `context` is given."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        context = x if context is None else context
        b, n, d = x.shape
        q = self.q(x).view(b, n, self.heads, d // self.heads).transpose(1, 2)
        k, v = self.kv(context).view(b, context.shape[1], 2, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        return self.out(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, d))


class Block(nn.Module):
    """Pre-norm Transformer block; with `cross=True` it also attends to a context sequence."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, cross: bool = False) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.cross = Attention(dim, heads) if cross else None
        self.norm_x = nn.LayerNorm(dim) if cross else None
        self.norm_ctx = nn.LayerNorm(dim) if cross else None
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: Tensor, context: Tensor | None = None, group: int = 1) -> Tensor:
        """`group` queries share one context: x is (B·group, T, D), context is (B, S, D)."""
        x = x + self.attn(self.norm1(x))
        if self.cross is not None and context is not None:
            bg, t, d = x.shape
            shared = self.norm_x(x).reshape(bg // group, group * t, d)
            x = x + self.cross(shared, self.norm_ctx(context)).reshape(bg, t, d)
        return x + self.mlp(self.norm2(x))


class PromptEncoding(NamedTuple):
    """A task's prompts, encoded once: tokens (B, N·T, D), foreground/background prototypes (B, 2, D) and the
    intensity log-likelihood ratio of foreground vs background per intensity bin (B, INTENSITY_BINS)."""

    tokens: Tensor
    prototypes: Tensor
    intensity_log_ratio: Tensor


def _intensity_log_ratio(images: Tensor, masks: Tensor, batch: int) -> Tensor:
    """log p(intensity | foreground) − log p(intensity | background), pooled over all prompts: (B, bins).

    Histograms are sums over prompts (order-free), smoothed and Laplace-regularized so that intensities no prompt
    showed get a ratio near 0.
    """
    bins = INTENSITY_BINS
    index = (images.clamp(0, 1) * (bins - 1)).round().long().reshape(batch, -1)
    weights = masks.reshape(batch, -1)
    fg = torch.zeros(batch, bins, device=images.device).scatter_add_(1, index, weights)
    bg = torch.zeros(batch, bins, device=images.device).scatter_add_(1, index, 1 - weights)
    kernel = torch.tensor([[[0.25, 0.5, 0.25]]], device=images.device)
    hist = F.conv1d(torch.stack([fg, bg], 1).reshape(-1, 1, bins), kernel, padding=1).reshape(batch, 2, bins)
    prob = (hist + 1.0) / (hist.sum(-1, keepdim=True) + bins)
    return (prob[:, 0] / prob[:, 1]).log()


def _prototypes(features: Tensor, weights: Tensor, batch: int) -> Tensor:
    """Weighted foreground and background means of L2-normalized features over all prompts: (B, 2, D).

    features (B·N, L, D), weights (B·N, L, 1) foreground fraction per location.
    """
    normed = F.normalize(features, dim=-1)
    fg = (normed * weights).reshape(batch, -1, normed.shape[-1]).sum(1)
    bg = (normed * (1 - weights)).reshape(batch, -1, normed.shape[-1]).sum(1)
    return F.normalize(torch.stack([fg, bg], dim=1), dim=-1)


def _similarity(features: Tensor, prototypes: Tensor) -> Tensor:
    """Cosine similarity of (M, L, D) features to (M, 2, D) prototypes: (M, L, 2)."""
    return torch.einsum("mld,mkd->mlk", F.normalize(features, dim=-1), prototypes)


class PromptSeg(nn.Module):
    def __init__(self, config: PromptSegConfig) -> None:
        super().__init__()
        self.config = config
        d, p = config.dim, config.patch_size
        grid = config.resolution // p
        self.patch_embed = nn.Conv2d(1, d, p, stride=p)
        self.mask_embed = nn.Conv2d(1, d, p, stride=p)
        self.position = nn.Parameter(torch.randn(1, grid * grid, d) * 0.02)
        self.query_marker = nn.Parameter(torch.zeros(1, 1, d))
        self.encoder = nn.ModuleList(Block(d, config.heads, config.mlp_ratio) for _ in range(config.encoder_depth))
        self.prompt_blocks = nn.ModuleList(Block(d, config.heads, config.mlp_ratio) for _ in range(config.prompt_depth))
        self.fusion = nn.ModuleList(
            Block(d, config.heads, config.mlp_ratio, cross=True) for _ in range(config.fusion_depth)
        )
        self.similarity_scale = nn.Parameter(torch.tensor(10.0))
        self.similarity_embed = nn.Linear(3, d)
        self.head_norm = nn.LayerNorm(d)
        self.head_tokens = nn.Linear(d + 3, d)
        self.unpatchify = nn.ConvTranspose2d(d, 16, p, stride=p)
        self.refine = nn.Sequential(nn.Conv2d(16 + 1 + 3 + 1, 16, 3, padding=1), nn.GELU(), nn.Conv2d(16, 1, 1))

    @property
    def grid(self) -> int:
        return self.config.resolution // self.config.patch_size

    def _check(self, name: str, tensor: Tensor) -> None:
        r = self.config.resolution
        if tensor.ndim != 5 or tuple(tensor.shape[2:]) != (1, r, r):
            raise ValueError(f"{name} must have shape (B, N, 1, {r}, {r}), got {tuple(tensor.shape)}")

    def _encode_images(self, images: Tensor) -> Tensor:
        """(M, 1, R, R) → tokens (M, T, D)."""
        x = self.patch_embed(images).flatten(2).transpose(1, 2) + self.position
        for block in self.encoder:
            x = block(x)
        return x

    def encode_prompts(self, prompt_images: Tensor, prompt_masks: Tensor) -> PromptEncoding:
        self._check("prompt_images", prompt_images)
        self._check("prompt_masks", prompt_masks)
        b, n = prompt_images.shape[:2]
        if n < 1 or n > self.config.n_max:
            raise ValueError(f"number of prompts must be between 1 and {self.config.n_max}, got {n}")
        images, masks = prompt_images.flatten(0, 1), prompt_masks.flatten(0, 1).to(prompt_images.dtype)
        features = self._encode_images(images)
        coverage = F.avg_pool2d(masks, self.config.patch_size).flatten(1)[..., None]  # (B·N, T, 1)
        tokens = features + self.mask_embed(masks).flatten(2).transpose(1, 2)
        for block in self.prompt_blocks:
            tokens = block(tokens)
        return PromptEncoding(
            tokens.reshape(b, -1, tokens.shape[-1]),
            _prototypes(features, coverage, b),
            _intensity_log_ratio(images, masks, b),
        )

    def segment(self, encoding: PromptEncoding, queries: Tensor) -> Tensor:
        self._check("queries", queries)
        b, q = queries.shape[:2]
        flat = queries.flatten(0, 1)
        x = self._encode_images(flat) + self.query_marker
        similarity = _similarity(x, encoding.prototypes.repeat_interleave(q, dim=0))  # (B·Q, T, 2)
        ratio = encoding.intensity_log_ratio.repeat_interleave(q, dim=0)  # (B·Q, bins)
        index = (flat.clamp(0, 1) * (INTENSITY_BINS - 1)).round().long().flatten(1)
        intensity_prior = torch.gather(ratio, 1, index).reshape(b * q, 1, *flat.shape[-2:])
        token_prior = F.avg_pool2d(intensity_prior, self.config.patch_size).flatten(1)[..., None]
        similarity = torch.cat([similarity, token_prior], dim=-1)  # (B·Q, T, 3)
        x = x + self.similarity_embed(similarity * self.similarity_scale)
        for block in self.fusion:
            x = block(x, encoding.tokens, group=q)
        tokens = self.head_tokens(torch.cat([self.head_norm(x), similarity], dim=-1))
        feature_map = tokens.transpose(1, 2).reshape(b * q, -1, self.grid, self.grid)
        upsampled = self.unpatchify(feature_map)
        prior = F.interpolate(
            similarity.transpose(1, 2).reshape(b * q, 3, self.grid, self.grid) * self.similarity_scale,
            size=flat.shape[-2:],
            mode="bilinear",
            align_corners=False,
        )
        logits = self.refine(torch.cat([upsampled, flat, prior, intensity_prior], dim=1))
        return logits.reshape(b, q, 1, *flat.shape[-2:])

    def forward(self, prompt_images: Tensor, prompt_masks: Tensor, queries: Tensor) -> Tensor:
        return self.segment(self.encode_prompts(prompt_images, prompt_masks), queries)


def build_model(config: PromptSegConfig | dict) -> PromptSeg:
    """The model factory: the only way networks are built, from a config object or its JSON dict."""
    if isinstance(config, dict):
        config = PromptSegConfig.from_dict(config)
    if config.architecture != "promptseg":
        raise ValueError(f"unknown architecture {config.architecture!r}")
    return PromptSeg(config)
