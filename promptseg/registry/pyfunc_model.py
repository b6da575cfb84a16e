"""The MLflow pyfunc flavour of a registered PromptSeg version, logged as "model from code" (nothing pickled).

MLflow runs this file when a version is loaded: `load_context` rebuilds the network through the model factory
from the version's `model_config.json` and `model.safetensors` artifacts. `predict` takes a dict of numpy arrays
in the model I/O contract (prompt_images, prompt_masks, queries) and returns the logits.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import torch
from mlflow.models import set_model

from promptseg.nets import load_model


class PromptSegPyfunc(mlflow.pyfunc.PythonModel):
    def load_context(self, context: Any) -> None:
        weights = Path(context.artifacts["weights"])
        self.network = load_model(weights.parent)
        self.model_card = json.loads(Path(context.artifacts["model_card"]).read_text())

    # model_input stays unannotated: MLflow would otherwise derive a (wrong) list-based signature from the hint.
    def predict(self, context, model_input, params=None) -> np.ndarray:
        tensors = {
            k: torch.as_tensor(np.asarray(model_input[k], np.float32))
            for k in ("prompt_images", "prompt_masks", "queries")
        }
        with torch.inference_mode():
            return self.network(**tensors).numpy()


set_model(PromptSegPyfunc())
