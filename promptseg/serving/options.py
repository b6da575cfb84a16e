"""What every replica of the Serve application is built with (`ServeOptions`) and how the serving settings
(PROMPTSEG_SERVE_* variables) become it: the settings less the API key, which only the deploying process holds, and
the key's SHA-256, which the replicas compare requests against."""

from __future__ import annotations

from dataclasses import dataclass

from promptseg.serving.gateway import key_digest
from promptseg.serving.settings import ServeSettings


@dataclass(frozen=True)
class ServeOptions:
    """The serving settings without their API key, and the key's hash. The settings' four folders (tasks, jobs,
    audit, state) must be shared by every replica: the workspace on one machine, a shared volume on a cluster."""

    settings: ServeSettings
    api_key_sha256: str | None = None


def options_from(settings: ServeSettings) -> ServeOptions:
    """The deploy options the serving settings describe; the API key becomes its hash."""
    key = settings.api_key.get_secret_value() if settings.api_key else None
    return ServeOptions(settings.model_copy(update={"api_key": None}), key_digest(key) if key else None)
