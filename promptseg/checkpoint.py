"""Compatibility import path for model versions registered before the package split.

Their logged pyfunc code (an MLflow "model from code" file copied into every version) runs
`from promptseg.checkpoint import load_model`; the network loader now lives in `promptseg.nets.checkpoint`.
Versions registered since log `promptseg/registry/pyfunc_model.py`, which imports `promptseg.nets` directly.
"""

from promptseg.nets.checkpoint import load_model

__all__ = ["load_model"]
