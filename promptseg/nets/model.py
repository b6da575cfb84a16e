"""The PromptSeg network: contract 2 (model I/O, see `promptseg.nets.contract`) for the PromptSeg architecture.

After PromptSeg (ICASSP 2025; journal version Entropy 2026), with the reference code's prompt limits lifted:

- One ViT image encoder (`promptseg.nets.vit`, SAM's layout) encodes every prompt image, every prompt mask and every
  query. A prompt pair's tokens are its image's and its mask's tokens joined by a linear pair embedding shared by
  all prompts: prompts carry no index or order embedding, so any N from 1 to n_max works.
- A Transformer reads the prompt pairs and the queries as one sequence under a block mask: prompts attend to
  prompts, each query attends to the prompts and to itself, never the reverse. The prompts' keys and values of
  every layer therefore do not depend on the queries: `encode_prompts` computes them once per task and `segment`
  reuses them for any number of queries. Every reduction over prompts is an attention or a sum, so the output
  does not depend on prompt order.
- Three order-free priors from the prompts help a small model read them (the paper has none of them):
  foreground/background prototypes of the encoder features (`prototypes`: cosine similarity per query token, as
  in few-shot segmentation), the log-likelihood ratio of foreground vs background intensities (`intensity`,
  `intensity_log_ratio`), and the mean of the prompt masks (`location`: where the structure tends to lie). They
  are configurable (`PromptSegConfig.priors`, any subset, all three by default and for checkpoints that predate
  the option): a prior left out is zeros everywhere it enters the network, so the parameters keep their shapes.
- A light head: tokens → transposed-convolution unpatchify → a small convolution with the query image → logits.
- Optional information bottleneck (the journal version's framing): the prompt tokens pass through a variational
  bottleneck whose KL term the training loss weighs; off by default (see bench/RESULTS.md for the comparison).
- An ablation for evaluation: `tokens_zeroed(network)` is a copy whose head sees zeros instead of the ViT and
  Transformer features of the query tokens, so only the priors reach it.

Sizes: `tiny` (tests and demo on a 2-core CPU; its encoder leaves out SAM's relative positions, whose attention
bias costs a third of a CPU training step), `small`, and `base` (SAM's ViT-B encoder and a 12-layer, 768-wide
Transformer: the paper's size). Imports only torch and numpy.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, fields
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from promptseg.nets.contract import check_images, check_prompts
from promptseg.nets.vit import ImageEncoderViT

SIZES: dict[str, dict] = {
    "tiny": {
        "dim": 64,
        "heads": 4,
        "encoder_depth": 2,
        "window": 8,
        "global_blocks": (1,),
        "fusion_depth": 2,
        "relative_positions": False,
    },
    "small": {"dim": 192, "heads": 6, "encoder_depth": 6, "window": 8, "global_blocks": (2, 5), "fusion_depth": 4},
    "base": {
        "dim": 768,
        "heads": 12,
        "encoder_depth": 12,
        "window": 14,
        "global_blocks": (2, 5, 8, 11),
        "fusion_depth": 12,
    },
}
TOKEN_GRID = 16
INTENSITY_BINS = 64
PRIORS = 4  # per query token: similarity to the foreground and background prototypes, intensity, location
PRIOR_NAMES = ("prototypes", "intensity", "location")
HEAD_CHANNELS = 16


@dataclass(frozen=True)
class PromptSegConfig:
    """Everything needed to rebuild the network; stored as JSON next to the weights."""

    size: str = "tiny"
    resolution: int = 256
    patch_size: int = 16
    dim: int = 64
    heads: int = 4
    encoder_depth: int = 2
    window: int = 8
    global_blocks: tuple[int, ...] = (1,)
    relative_positions: bool = True
    fusion_depth: int = 2
    mlp_ratio: float = 4.0
    n_max: int = 64
    bottleneck: bool = False
    priors: tuple[str, ...] = PRIOR_NAMES
    architecture: str = "promptseg"

    def __post_init__(self) -> None:
        object.__setattr__(self, "priors", check_priors(self.priors))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> PromptSegConfig:
        """From the JSON dict; a dict without `priors` (a checkpoint older than the option) has all three."""
        unknown = set(data) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown model config keys: {sorted(unknown)}")
        return cls(**{**data, "global_blocks": tuple(data.get("global_blocks", cls.global_blocks))})


def check_priors(priors: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """The priors named, in the canonical order of PRIOR_NAMES (duplicates dropped); unknown names raise."""
    if isinstance(priors, str):
        raise ValueError(f"priors must be a sequence of names, not the string {priors!r}")
    unknown = sorted(set(priors) - set(PRIOR_NAMES))
    if unknown:
        raise ValueError(f"unknown priors {unknown}; allowed: {list(PRIOR_NAMES)} (any subset)")
    return tuple(name for name in PRIOR_NAMES if name in priors)


def promptseg_config(
    size: str = "tiny",
    resolution: int = 256,
    n_max: int = 64,
    bottleneck: bool = False,
    priors: tuple[str, ...] | list[str] = PRIOR_NAMES,
) -> PromptSegConfig:
    """The named size at a resolution; patches are sized so that every image becomes a 16×16 token grid."""
    if size not in SIZES:
        raise ValueError(f"unknown PromptSeg size {size!r}; choose one of {sorted(SIZES)}")
    if resolution % TOKEN_GRID:
        raise ValueError(f"resolution must be a multiple of {TOKEN_GRID}, got {resolution}")
    return PromptSegConfig(
        size=size,
        resolution=resolution,
        patch_size=resolution // TOKEN_GRID,
        n_max=n_max,
        bottleneck=bottleneck,
        priors=tuple(priors),
        **SIZES[size],
    )


class PromptEncoding(NamedTuple):
    """A task's prompts, encoded once (batch axis first, so encodings concatenate and serialize as tensors).

    keys, values: (B, layers, N·T, D) per fusion layer; prototypes: (B, 2, D) foreground/background;
    intensity_log_ratio: (B, INTENSITY_BINS); mean_mask: (B, 1, R, R) the prompts' masks averaged (where the
    structure tends to lie); kl: (B,) the bottleneck's KL term (zeros without a bottleneck).
    """

    keys: Tensor
    values: Tensor
    prototypes: Tensor
    intensity_log_ratio: Tensor
    mean_mask: Tensor
    kl: Tensor


def intensity_log_ratio(images: Tensor, masks: Tensor, batch: int) -> Tensor:
    """log p(intensity | foreground) − log p(intensity | background), pooled over all prompts: (B, bins).

    images and masks: B tasks' prompt pairs, task-major ((B·N, 1, R, R) or (B, N, 1, R, R)), images in [0, 1]
    (a pixel falls in bin round(intensity · (bins − 1))), masks binary (or foreground weights in [0, 1]).
    Histograms are sums over prompts (order-free), smoothed and Laplace-regularized (+1 per bin): an intensity no
    prompt showed gets log((background pixels + bins) / (foreground pixels + bins)), 0 only where foreground and
    background are as large, and positive (leaning to foreground) where the foreground is the smaller.
    """
    bins = INTENSITY_BINS
    index = (images.float().clamp(0, 1) * (bins - 1)).round().long().reshape(batch, -1)
    weights = masks.float().reshape(batch, -1)
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
    normed = F.normalize(features.float(), dim=-1)
    fg = (normed * weights).reshape(batch, -1, normed.shape[-1]).sum(1)
    bg = (normed * (1 - weights)).reshape(batch, -1, normed.shape[-1]).sum(1)
    return F.normalize(torch.stack([fg, bg], dim=1), dim=-1)


def _split_heads(x: Tensor, heads: int) -> Tensor:
    """(M, S, D) → (M, heads, S, D / heads)."""
    return x.unflatten(-1, (heads, -1)).transpose(1, 2)


class FusionBlock(nn.Module):
    """One layer of the prompt–query Transformer; prompts and queries share its weights (one sequence)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def _finish(self, x: Tensor, attended: Tensor) -> Tensor:
        x = x + self.proj(attended.transpose(1, 2).flatten(2))
        return x + self.mlp(self.norm2(x))

    def prompts(self, p: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Prompts attend to all prompts: (B, S, D) → (updated tokens, keys, values), keys/values (B, S, D)."""
        q, k, v = self.qkv(self.norm1(p)).chunk(3, dim=-1)
        attended = F.scaled_dot_product_attention(*(_split_heads(t, self.heads) for t in (q, k, v)))
        return self._finish(p, attended), k, v

    def queries(self, x: Tensor, prompt_keys: Tensor, prompt_values: Tensor, group: int) -> Tensor:
        """Each query attends to its task's prompts and to itself: x (B·group, T, D), prompt keys (B, S, D)."""
        q, k, v = self.qkv(self.norm1(x)).chunk(3, dim=-1)
        k = torch.cat([prompt_keys.to(k.dtype).repeat_interleave(group, 0), k], dim=1)
        v = torch.cat([prompt_values.to(v.dtype).repeat_interleave(group, 0), v], dim=1)
        attended = F.scaled_dot_product_attention(*(_split_heads(t, self.heads) for t in (q, k, v)))
        return self._finish(x, attended)


class PromptSeg(nn.Module):
    def __init__(self, config: PromptSegConfig) -> None:
        super().__init__()
        self.config = config
        d = config.dim
        self.image_encoder = ImageEncoderViT(
            resolution=config.resolution,
            patch=config.patch_size,
            dim=d,
            depth=config.encoder_depth,
            heads=config.heads,
            mlp_ratio=config.mlp_ratio,
            window=config.window,
            global_blocks=config.global_blocks,
            use_rel_pos=config.relative_positions,
        )
        self.pair_embed = nn.Linear(2 * d, d)
        self.query_embed = nn.Linear(d, d)
        self.fusion_position = nn.Parameter(torch.randn(1, self.grid**2, d) * 0.02)
        self.bottleneck = nn.Linear(d, 2 * d) if config.bottleneck else None
        self.fusion = nn.ModuleList(FusionBlock(d, config.heads, config.mlp_ratio) for _ in range(config.fusion_depth))
        self.similarity_scale = nn.Parameter(torch.tensor(10.0))
        self.similarity_embed = nn.Linear(PRIORS, d)
        self.head_norm = nn.LayerNorm(d)
        self.head_tokens = nn.Linear(d + PRIORS, d)
        self.unpatchify = nn.ConvTranspose2d(d, HEAD_CHANNELS, config.patch_size, stride=config.patch_size)
        self.refine = nn.Sequential(
            nn.Conv2d(HEAD_CHANNELS + 1 + PRIORS + 2, HEAD_CHANNELS, 3, padding=1),
            nn.GELU(),
            nn.Conv2d(HEAD_CHANNELS, 1, 1),
        )
        self.zero_tokens = False  # the `tokens_zeroed` ablation: the head sees zeros instead of the query tokens

    @property
    def grid(self) -> int:
        return self.config.resolution // self.config.patch_size

    def _bottleneck(self, tokens: Tensor) -> tuple[Tensor, Tensor]:
        """Variational bottleneck on prompt tokens: (sampled tokens, KL per task averaged over tokens and dims)."""
        if self.bottleneck is None:
            return tokens, tokens.new_zeros(tokens.shape[0])
        mean, log_var = self.bottleneck(tokens).float().chunk(2, dim=-1)
        log_var = log_var.clamp(-8, 8)
        kl = 0.5 * (mean.square() + log_var.exp() - 1 - log_var).mean(dim=(1, 2))
        sampled = mean + torch.randn_like(mean) * (0.5 * log_var).exp() if self.training else mean
        return sampled.to(tokens.dtype), kl

    def encode_prompts(self, prompt_images: Tensor, prompt_masks: Tensor) -> PromptEncoding:
        check_prompts(prompt_images, prompt_masks, self.config.resolution, self.config.n_max)
        b, n = prompt_images.shape[:2]
        images, masks = prompt_images.flatten(0, 1), prompt_masks.flatten(0, 1).to(prompt_images.dtype)
        encoded = self.image_encoder(torch.cat([images, masks]))
        image_tokens, mask_tokens = encoded[: b * n], encoded[b * n :]
        coverage = F.avg_pool2d(masks.float(), self.config.patch_size).flatten(1)[..., None]  # (B·N, T, 1)
        tokens = self.pair_embed(torch.cat([image_tokens, mask_tokens], dim=-1)) + self.fusion_position
        tokens, kl = self._bottleneck(tokens.reshape(b, n * self.grid**2, -1))
        keys, values = [], []
        for block in self.fusion:
            tokens, k, v = block.prompts(tokens)
            keys.append(k)
            values.append(v)
        return PromptEncoding(
            torch.stack(keys, dim=1),
            torch.stack(values, dim=1),
            _prototypes(image_tokens, coverage, b),
            intensity_log_ratio(images, masks, b),
            masks.float().unflatten(0, (b, n)).mean(1),
            kl,
        )

    def segment(self, encoding: PromptEncoding, queries: Tensor) -> Tensor:
        check_images("queries", queries, self.config.resolution)
        b, q = queries.shape[:2]
        if encoding.keys.shape[0] != b:
            raise ValueError(f"queries have batch size {b} but the prompt encoding has {encoding.keys.shape[0]}")
        flat = queries.flatten(0, 1)
        features = self.image_encoder(flat)
        priors = self.config.priors  # a prior left out is zeros here, and so everywhere downstream
        if "prototypes" in priors:
            similarity = torch.einsum(
                "mld,mkd->mlk",
                F.normalize(features.float(), dim=-1),
                encoding.prototypes.float().repeat_interleave(q, dim=0),
            )  # (B·Q, T, 2)
        else:
            similarity = features.new_zeros(b * q, self.grid**2, 2, dtype=torch.float32)
        if "intensity" in priors:
            ratio = encoding.intensity_log_ratio.float().repeat_interleave(q, dim=0)  # (B·Q, bins)
            index = (flat.float().clamp(0, 1) * (INTENSITY_BINS - 1)).round().long().flatten(1)
            intensity_prior = torch.gather(ratio, 1, index).reshape(b * q, 1, *flat.shape[-2:])
        else:
            intensity_prior = flat.new_zeros(b * q, 1, *flat.shape[-2:], dtype=torch.float32)
        if "location" in priors:
            location_prior = encoding.mean_mask.float().repeat_interleave(q, dim=0)  # (B·Q, 1, R, R)
        else:
            location_prior = flat.new_zeros(b * q, 1, *flat.shape[-2:], dtype=torch.float32)
        token_priors = F.avg_pool2d(torch.cat([intensity_prior, location_prior], 1), self.config.patch_size)
        similarity = torch.cat([similarity, token_priors.flatten(2).transpose(1, 2)], dim=-1).to(features.dtype)
        if self.zero_tokens:
            x = torch.zeros_like(features)
        else:
            x = (
                self.query_embed(features)
                + self.fusion_position
                + self.similarity_embed(similarity * self.similarity_scale)
            )
            for layer, block in enumerate(self.fusion):
                x = block.queries(x, encoding.keys[:, layer], encoding.values[:, layer], q)
            x = self.head_norm(x)
        tokens = self.head_tokens(torch.cat([x, similarity.to(x.dtype)], dim=-1))
        feature_map = tokens.transpose(1, 2).reshape(b * q, -1, self.grid, self.grid)
        prior = F.interpolate(
            similarity.transpose(1, 2).reshape(b * q, PRIORS, self.grid, self.grid) * self.similarity_scale,
            size=flat.shape[-2:],
            mode="bilinear",
            align_corners=False,
        )
        head_input = [self.unpatchify(feature_map), flat, prior, intensity_prior, location_prior]
        dtype = head_input[0].dtype
        logits = self.refine(torch.cat([t.to(dtype) for t in head_input], dim=1))
        return logits.reshape(b, q, 1, *flat.shape[-2:])

    def forward(
        self, prompt_images: Tensor, prompt_masks: Tensor, queries: Tensor, return_kl: bool = False
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Logits for the queries; with `return_kl`, also the bottleneck's KL term per task (for training)."""
        encoding = self.encode_prompts(prompt_images, prompt_masks)
        logits = self.segment(encoding, queries)
        return (logits, encoding.kl) if return_kl else logits


def tokens_zeroed(network: PromptSeg) -> PromptSeg:
    """An ablation for evaluation: a copy of `network` whose head gets zeros in place of the query tokens' ViT and
    Transformer features (the normalized tokens `segment` hands to `head_tokens`), with the priors kept, so only
    the priors (and the query image in the refining convolution) reach the output. The copy skips the Transformer
    on the queries; prompt encodings are the same as the network's. The original is left as it is."""
    if not isinstance(network, PromptSeg):
        raise ValueError(f"the token-path ablation applies to PromptSeg only, not {type(network).__name__}")
    ablated = copy.deepcopy(network)
    ablated.zero_tokens = True
    return ablated
