"""Networks: PromptSeg (`model`, with its ViT encoder `vit`), the UniverSeg-style baseline (`universeg`), the model
I/O contract (`contract`), the factory, pretrained encoder loading, losses and checkpoint folders.

May import: torch, numpy, safetensors. Nothing else of the platform, so GPU benchmarks run from a bare checkout.
"""

from promptseg.nets.checkpoint import load_model, save_model
from promptseg.nets.factory import build_model, model_config

__all__ = ["build_model", "load_model", "model_config", "save_model"]
