"""A UniverSeg-style in-context segmentation network: the published in-context baseline, under contract 2.

Owns `UniverSegConfig`, `UniverSegEncoding` and the `UniverSeg` network, written from the description in
Butoi et al., "UniverSeg: Universal Medical Image Segmentation" (ICCV 2023). Contract (see promptseg.nets.contract)::

    prompt_images (B, N, 1, R, R) float in [0, 1]     N from 1 to config.n_max
    prompt_masks  (B, N, 1, R, R) in {0, 1}
    queries       (B, Q, 1, R, R) float in [0, 1]
    → logits      (B, Q, 1, R, R)

Architecture:
- CrossConv: for a query feature map q and each support feature map s_i (support = image and mask as two
  channels), z_i = act(conv3×3([q, s_i])). The conv of a concatenation is the sum of convs of its parts, so the
  query half is computed once and added to every support's half.
- CrossBlock: the query's new features are act(conv(mean_i z_i)); each support's are act(conv(z_i)). The mean
  makes the output independent of support order and valid for any N.
- A U-Net of CrossBlocks: `levels` encoder blocks of `width` channels with 2× max-pooling between them, a decoder
  that up-samples (bilinear) and concatenates the skip features of query and supports alike, and a 1×1 conv from
  the query features to one logit channel at the input resolution.
- Q queries against the same supports are folded into the batch, with the supports repeated per query.

Imports only torch (and promptseg.nets.contract) so that GPU benchmarks run from a bare checkout.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from promptseg.nets.contract import check_images, check_prompts


@dataclass(frozen=True)
class UniverSegConfig:
    """Everything needed to rebuild the network; stored as JSON next to the weights."""

    architecture: str = "universeg"
    size: str = "universeg"
    resolution: int = 256
    n_max: int = 64
    width: int = 64
    levels: int = 4

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> UniverSegConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown model config keys: {sorted(unknown)}")
        return cls(**data)


class UniverSegEncoding(NamedTuple):
    """The validated prompts, as they are: (B, N, 1, R, R) images and float masks.

    UniverSeg has no query-independent prompt encoding: its support features are updated jointly with each query
    in every CrossBlock, so all of the work happens in `segment`.
    """

    prompt_images: Tensor
    prompt_masks: Tensor


class CrossBlock(nn.Module):
    """CrossConv of the query with each support, then separate convs for the query (on the mean) and supports.

    The network's last block has no support conv (`update_support=False`): nothing reads its supports, and a
    parameter without gradient would stop DDP."""

    def __init__(self, query_channels: int, support_channels: int, width: int, update_support: bool = True) -> None:
        super().__init__()
        self.cross_query = nn.Conv2d(query_channels, width, 3, padding=1)
        self.cross_support = nn.Conv2d(support_channels, width, 3, padding=1, bias=False)
        self.query = nn.Conv2d(width, width, 3, padding=1)
        self.support = nn.Conv2d(width, width, 3, padding=1) if update_support else None

    def forward(self, query: Tensor, support: Tensor) -> tuple[Tensor, Tensor | None]:
        """query (M, Cq, H, W), support (M, N, Cs, H, W) → (M, width, H, W), (M, N, width, H, W) or None."""
        m, n = support.shape[:2]
        pairs = self.cross_query(query)[:, None] + self.cross_support(support.flatten(0, 1)).unflatten(0, (m, n))
        pairs = F.leaky_relu(pairs)
        new_query = F.leaky_relu(self.query(pairs.mean(dim=1)))
        if self.support is None:
            return new_query, None
        new_support = F.leaky_relu(self.support(pairs.flatten(0, 1))).unflatten(0, (m, n))
        return new_query, new_support


def _pool(query: Tensor, support: Tensor) -> tuple[Tensor, Tensor]:
    return F.max_pool2d(query, 2), F.max_pool2d(support.flatten(0, 1), 2).unflatten(0, support.shape[:2])


def _upsample(features: Tensor) -> Tensor:
    """2× bilinear up-sampling of (M, C, H, W) or (M, N, C, H, W) features."""
    flat = features.flatten(0, features.ndim - 4)
    up = F.interpolate(flat, scale_factor=2, mode="bilinear", align_corners=False)
    return up.reshape(*features.shape[:-2], *up.shape[-2:])


class UniverSeg(nn.Module):
    def __init__(self, config: UniverSegConfig) -> None:
        super().__init__()
        if config.levels < 1 or config.width < 1:
            raise ValueError(f"levels and width must be positive, got {config.levels} and {config.width}")
        if config.resolution % 2 ** (config.levels - 1):
            raise ValueError(f"resolution must be divisible by {2 ** (config.levels - 1)}, got {config.resolution}")
        self.config = config
        w = config.width
        last = config.levels - 1
        self.encoder = nn.ModuleList(
            CrossBlock(1 if level == 0 else w, 2 if level == 0 else w, w, update_support=last > 0)
            for level in range(config.levels)
        )
        self.decoder = nn.ModuleList(CrossBlock(2 * w, 2 * w, w, update_support=i < last - 1) for i in range(last))
        self.head = nn.Conv2d(w, 1, 1)

    def encode_prompts(self, prompt_images: Tensor, prompt_masks: Tensor) -> UniverSegEncoding:
        check_prompts(prompt_images, prompt_masks, self.config.resolution, self.config.n_max)
        return UniverSegEncoding(prompt_images, prompt_masks.to(prompt_images.dtype))

    def segment(self, encoding: UniverSegEncoding, queries: Tensor) -> Tensor:
        check_images("queries", queries, self.config.resolution)
        b, q = queries.shape[:2]
        if encoding.prompt_images.shape[0] != b:
            raise ValueError(f"queries batch {b} must match the prompts' batch {encoding.prompt_images.shape[0]}")
        support = torch.cat([encoding.prompt_images, encoding.prompt_masks], dim=2).repeat_interleave(q, dim=0)
        logits = self._unet(queries.flatten(0, 1), support)
        return logits.reshape(b, q, 1, *queries.shape[-2:])

    def forward(
        self, prompt_images: Tensor, prompt_masks: Tensor, queries: Tensor, return_kl: bool = False
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Logits for the queries; with `return_kl` also a zero KL term per task (no bottleneck), as the trainer
        expects of every network."""
        logits = self.segment(self.encode_prompts(prompt_images, prompt_masks), queries)
        return (logits, logits.new_zeros(logits.shape[0])) if return_kl else logits

    def _unet(self, query: Tensor, support: Tensor) -> Tensor:
        """query (M, 1, R, R), support (M, N, 2, R, R) → logits (M, 1, R, R)."""
        skips = []
        for level, block in enumerate(self.encoder):
            if level:
                query, support = _pool(query, support)
            query, support = block(query, support)
            skips.append((query, support))
        for block, (skip_query, skip_support) in zip(self.decoder, reversed(skips[:-1]), strict=True):
            query = torch.cat([_upsample(query), skip_query], dim=1)
            support = torch.cat([_upsample(support), skip_support], dim=2)
            query, support = block(query, support)
        return self.head(query)
