"""The ViT image encoder of PromptSeg, in the layout of SAM's image encoder.

The encoder follows SAM's ViT (Kirillov et al., 2023): a patch embedding, absolute 2D positions, and Transformer
blocks with decomposed relative positions, most attending inside local windows and a few (`global_blocks`)
attending globally. Attention runs on torch's `scaled_dot_product_attention` (the relative positions enter as
its additive bias). Parameter names match SAM's `image_encoder.*` keys, so a SAM or SAM-Med2D ViT-B checkpoint
loads by name (`promptseg.nets.pretrained`). Grey images enter through one input channel.

Imports only torch and numpy.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _relative_positions(size: int, table: Tensor) -> Tensor:
    """The embedding of every (query, key) offset along one axis of a size×size window: (size, size, C).

    A table learned for another window size is linearly interpolated to the 2·size − 1 offsets needed.
    """
    span = 2 * size - 1
    if table.shape[0] != span:
        table = F.interpolate(table.T[None], size=span, mode="linear", align_corners=False)[0].T
    position = torch.arange(size, device=table.device)
    return table[position[:, None] - position[None, :] + size - 1]


class Attention(nn.Module):
    """Multi-head self-attention over an (B, H, W, C) token map, with optional decomposed relative positions."""

    def __init__(self, dim: int, heads: int, size: int, use_rel_pos: bool) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.use_rel_pos = use_rel_pos
        if use_rel_pos:
            self.rel_pos_h = nn.Parameter(torch.zeros(2 * size - 1, dim // heads))
            self.rel_pos_w = nn.Parameter(torch.zeros(2 * size - 1, dim // heads))

    def forward(self, x: Tensor) -> Tensor:
        b, h, w, c = x.shape
        qkv = self.qkv(x).reshape(b, h * w, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # (B, heads, L, c/heads)
        bias = None
        if self.use_rel_pos:
            r_q = q.reshape(b, self.heads, h, w, -1)
            rel_h = torch.einsum("bnhwc,hkc->bnhwk", r_q, _relative_positions(h, self.rel_pos_h).to(q.dtype))
            rel_w = torch.einsum("bnhwc,wkc->bnhwk", r_q, _relative_positions(w, self.rel_pos_w).to(q.dtype))
            bias = (rel_h[..., :, None] + rel_w[..., None, :]).reshape(b, self.heads, h * w, h * w)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        return self.proj(out.transpose(1, 2).reshape(b, h, w, c))


class MLPBlock(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.lin1 = nn.Linear(dim, hidden)
        self.lin2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.lin2(F.gelu(self.lin1(x)))


def _windows(x: Tensor, window: int) -> tuple[Tensor, tuple[int, int]]:
    """(B, H, W, C) → (B·nW, window, window, C), zero-padding H and W up to multiples of `window`."""
    b, h, w, c = x.shape
    pad_h, pad_w = (window - h % window) % window, (window - w % window) % window
    x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
    hp, wp = h + pad_h, w + pad_w
    x = x.view(b, hp // window, window, wp // window, window, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, window, window, c), (hp, wp)


def _unwindow(x: Tensor, window: int, padded: tuple[int, int], size: tuple[int, int]) -> Tensor:
    hp, wp = padded
    b = x.shape[0] // (hp * wp // window // window)
    x = x.view(b, hp // window, wp // window, window, window, -1).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(b, hp, wp, -1)[:, : size[0], : size[1]]


class Block(nn.Module):
    """SAM's ViT block: windowed (window > 0) or global attention, then an MLP; pre-norm residuals."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, window: int, grid: int, use_rel_pos: bool) -> None:
        super().__init__()
        self.window = window
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads, window if window else grid, use_rel_pos)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = MLPBlock(dim, int(dim * mlp_ratio))

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x
        x = self.norm1(x)
        if self.window:
            size = x.shape[1:3]
            x, padded = _windows(x, self.window)
            x = _unwindow(self.attn(x), self.window, padded, size)
        else:
            x = self.attn(x)
        x = shortcut + x
        return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
    def __init__(self, patch: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(1, dim, patch, stride=patch)

    def forward(self, images: Tensor) -> Tensor:
        return self.proj(images).permute(0, 2, 3, 1)  # (M, H, W, C)


class ImageEncoderViT(nn.Module):
    """(M, 1, R, R) images → (M, G·G, dim) tokens, G = R / patch."""

    def __init__(
        self,
        *,
        resolution: int,
        patch: int,
        dim: int,
        depth: int,
        heads: int,
        mlp_ratio: float,
        window: int,
        global_blocks: tuple[int, ...],
        use_rel_pos: bool = True,
    ) -> None:
        super().__init__()
        grid = resolution // patch
        self.patch_embed = PatchEmbed(patch, dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, grid, grid, dim))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        self.blocks = nn.ModuleList(
            Block(dim, heads, mlp_ratio, 0 if i in global_blocks else window, grid, use_rel_pos) for i in range(depth)
        )

    def forward(self, images: Tensor) -> Tensor:
        x = self.patch_embed(images) + self.pos_embed
        for block in self.blocks:
            x = block(x)
        return x.flatten(1, 2)
