"""Contract 3, the model registry, and run tracking: the only code of the platform that imports mlflow.

`versions` (registered versions, aliases and their history, evaluation tags), `tracking` (experiments, the runs
training, evaluation and the pipelines log to), `pyfunc_model` (the logged model flavour), `settings`.

May import: mlflow, `promptseg.nets`.
"""
