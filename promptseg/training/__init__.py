"""Training: the Ray Train loop (DDP workers, exact checkpoints, resume), task augmentation, synthetic tasks, the
trainer's saved state and the training settings.

May import: `promptseg.nets`, `promptseg.registry` (to log), `storage`, ray and torch; never `serving`.
"""
