"""Data stage of the platform: raw readers, the verifier, the ingest record (the hand-off from ingest to preprocess),
the harmonization recipe, the Zarr task store and the episode sampler.

This package imports nothing from `promptseg` or `pipelines` (layers go one way: pipelines → promptseg → storage).
"""
