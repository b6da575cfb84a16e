"""Held-out evaluation: the protocol (episodes, profiles, reports, plots and overlays), metrics, the trivial
baselines and the supervised reference UNet.

May import: `promptseg.nets`, `promptseg.inference`, `storage`, monai and matplotlib; never `serving` or `training`.
"""
