"""Keyed pseudonyms for cases: the store never holds a source file name, which may carry a patient identifier.

A case id in the store is an HMAC-SHA256 of the dataset name and the source case id under a per-workspace secret
(a random key created once, readable only by its owner). The same source case always maps to the same id within
a workspace, so re-runs stay linkable; without the secret the id reveals nothing about the name.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path

KEY_BYTES = 32


def workspace_secret(path: Path) -> bytes:
    """The workspace's secret key, created (mode 0600) on first use."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another process created it first: use theirs
            return path.read_bytes()
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(secrets.token_bytes(KEY_BYTES))
    return path.read_bytes()


def keyed_case_id(secret: bytes, dataset: str, case: str) -> str:
    """A stable pseudonym for (dataset, case): 'c' + 16 hex characters of an HMAC."""
    return "c" + hmac.new(secret, f"{dataset}\0{case}".encode(), hashlib.sha256).hexdigest()[:16]
