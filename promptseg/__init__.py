"""The model layer of the platform, one sub-package per stage or layer:

- `nets`: the networks (PromptSeg, its ViT encoder, the UniverSeg-style baseline), the model I/O contract, the
  factory, pretrained loading, losses and checkpoint folders. Imports only torch, numpy and safetensors.
- `inference`: the predictor (harmonized pixels in, masks on each query's own grid out), its input errors and the
  decoders of user files (2D images, volumes). Imports `nets` and `storage`, never `serving` or `training`.
- `training`: the Ray Train loop, task augmentation and synthetic tasks.
- `evaluation`: the held-out protocol, metrics, trivial baselines and the supervised reference.
- `registry`: contract 3, the only code that imports mlflow (runs, model versions, aliases, the pyfunc flavour).
- `serving`: contract 4, the Ray Serve application, its gateway, served model and tasks, API models and the client.

Imports `storage`, never `pipelines`. The layering is checked by tests/unit/test_layering.py.
"""
