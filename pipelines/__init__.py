"""Orchestration layer: Prefect flows that call `storage` and `promptseg`, and the `promptseg` CLI.

Nothing imports this package; it holds no algorithms.
"""
