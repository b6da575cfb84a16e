"""Model layer of the platform: the PromptSeg network and baselines, losses, metrics, the predictor, training on
Ray Train, evaluation, registry access (MLflow) and the Ray Serve application with its client.

Imports `storage`, never `pipelines`. The network code (promptseg.model) imports only torch and numpy.
"""
