"""Held-out evaluation: the protocol (episodes, profiles, reports, plots and overlays), its spec and report models
(`report`: what stages hand on and the registry records), metrics, the trivial baselines and the supervised
reference UNet.

May import: `promptseg.nets`, `promptseg.inference`, `promptseg.registry` (the record it tags a version with),
`storage`, monai and matplotlib; never `serving` or `training`.
"""
