"""Loading SAM / SAM-Med2D ViT image-encoder weights from a local file into PromptSeg's encoder (`promptseg.nets.vit`).

Nothing is ever downloaded. SAM's neck (a projection to its mask decoder's width), prompt encoder, mask decoder and
SAM-Med2D's adapters are not part of PromptSeg and are ignored. SAM's patch embedding has three (RGB) channels;
repeating a grey image over them equals summing the three weight slices, which is how they are loaded.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import Tensor

from promptseg.nets.vit import ImageEncoderViT


class PretrainedWeightsError(ValueError):
    """A pretrained encoder file that cannot be loaded into this encoder; the message names the file."""


def _read_state_dict(path: Path) -> dict[str, Tensor]:
    if not path.is_file():
        raise PretrainedWeightsError(f"{path}: no such file")
    try:
        if path.suffix == ".safetensors":
            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise PretrainedWeightsError(f"{path}: not a readable state dict ({error})") from error
    if isinstance(state, dict) and isinstance(state.get("model"), dict):  # SAM-Med2D wraps its weights
        state = state["model"]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise PretrainedWeightsError(f"{path}: expected a mapping of parameter names to tensors")
    return state


def load_sam_encoder(encoder: ImageEncoderViT, path: Path) -> list[str]:
    """Load SAM / SAM-Med2D image-encoder weights from a local file into `encoder`; return the ignored keys.

    Keys may carry SAM's `image_encoder.` prefix (a full SAM checkpoint); other components, the neck and
    SAM-Med2D's adapters are ignored. Positions and relative-position tables are interpolated to this encoder's
    grid. Any missing key or mismatched shape raises `PretrainedWeightsError` naming the file and the key;
    nothing is loaded then.
    """
    source = _read_state_dict(Path(path))
    prefix = "image_encoder." if any(k.startswith("image_encoder.") for k in source) else ""
    encoder_keys = {k[len(prefix) :]: v for k, v in source.items() if k.startswith(prefix)}
    ignored = sorted(set(source) - {prefix + k for k in encoder.state_dict()})
    target = encoder.state_dict()
    loaded: dict[str, Tensor] = {}
    for key, expected in target.items():
        if key not in encoder_keys:
            raise PretrainedWeightsError(f"{path}: missing encoder weight {prefix}{key} {tuple(expected.shape)}")
        value = encoder_keys[key].float()
        if key == "patch_embed.proj.weight" and value.ndim == 4 and value.shape[1] == 3:
            value = value.sum(1, keepdim=True)
        elif key == "pos_embed" and value.ndim == 4 and value.shape[-1] == expected.shape[-1]:
            value = F.interpolate(value.permute(0, 3, 1, 2), size=expected.shape[1:3], mode="bicubic")
            value = value.permute(0, 2, 3, 1)
        elif key.endswith(("rel_pos_h", "rel_pos_w")) and value.ndim == 2 and value.shape[1] == expected.shape[1]:
            value = F.interpolate(value.T[None], size=expected.shape[0], mode="linear", align_corners=False)[0].T
        if value.shape != expected.shape:
            raise PretrainedWeightsError(
                f"{path}: {prefix}{key} has shape {tuple(value.shape)}, this encoder needs {tuple(expected.shape)}"
            )
        loaded[key] = value
    unexpected = sorted(
        k for k in set(encoder_keys) - set(target) if not k.startswith("neck.") and "adapter" not in k.lower()
    )
    if unexpected:
        raise PretrainedWeightsError(
            f"{path}: weights this encoder has no place for (a deeper or different encoder?): {unexpected[:5]}"
        )
    encoder.load_state_dict(loaded)
    return ignored
