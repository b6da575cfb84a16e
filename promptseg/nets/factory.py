"""The model factory: the only way networks are built, from a size name or a config's JSON dict.

Two in-context architectures share contract 2 (`promptseg.nets.contract`): PromptSeg (`promptseg.nets.model`,
sizes tiny, small, base) and the UniverSeg-style baseline (`promptseg.nets.universeg`, size "universeg": 64 wide,
4 levels). PromptSeg's priors are an option of its config (`priors`, any subset of `PRIOR_NAMES`).
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from promptseg.nets.model import PRIOR_NAMES, SIZES, PromptEncoding, PromptSeg, PromptSegConfig, promptseg_config
from promptseg.nets.pretrained import load_sam_encoder
from promptseg.nets.universeg import UniverSeg, UniverSegConfig, UniverSegEncoding

NetworkConfig = PromptSegConfig | UniverSegConfig
ARCHITECTURES: dict[str, tuple[type, type]] = {
    "promptseg": (PromptSegConfig, PromptSeg),
    "universeg": (UniverSegConfig, UniverSeg),
}
MODEL_SIZES = (*SIZES, "universeg")
ENCODINGS: dict[str, type] = {cls.__name__: cls for cls in (PromptEncoding, UniverSegEncoding)}


def model_config(
    size: str = "tiny",
    resolution: int = 256,
    n_max: int = 64,
    bottleneck: bool = False,
    priors: tuple[str, ...] | list[str] = PRIOR_NAMES,
) -> NetworkConfig:
    """The config of a named size: a PromptSeg size or "universeg" (the baseline). `priors`: PromptSeg's priors
    (any subset of PRIOR_NAMES, all by default)."""
    if size == "universeg":
        if bottleneck:
            raise ValueError("the information bottleneck is a PromptSeg option; the UniverSeg baseline has none")
        if set(priors) != set(PRIOR_NAMES):
            raise ValueError("priors are a PromptSeg option; the UniverSeg baseline has none")
        return UniverSegConfig(resolution=resolution, n_max=n_max)
    if size not in SIZES:
        raise ValueError(f"unknown model size {size!r}; choose one of {list(MODEL_SIZES)}")
    return promptseg_config(size, resolution, n_max, bottleneck, priors)


def config_from_dict(data: dict) -> NetworkConfig:
    architecture = data.get("architecture", "promptseg")
    if architecture not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {architecture!r}; known: {sorted(ARCHITECTURES)}")
    return ARCHITECTURES[architecture][0].from_dict(data)


def build_model(config: NetworkConfig | dict) -> nn.Module:
    """Build the network a config (or its JSON dict) describes."""
    if isinstance(config, dict):
        config = config_from_dict(config)
    return ARCHITECTURES[config.architecture][1](config)


def load_pretrained_encoder(network: nn.Module, path: Path) -> list[str]:
    """Load SAM / SAM-Med2D ViT image-encoder weights from a local file; return the checkpoint keys ignored."""
    if not isinstance(network, PromptSeg):
        raise ValueError(f"pretrained ViT encoder weights apply to PromptSeg only, not {type(network).__name__}")
    return load_sam_encoder(network.image_encoder, path)
