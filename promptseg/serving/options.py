"""The deploy options of the Serve application (`ServeOptions`, each replica's constructor argument) and how the
serving settings (PROMPTSEG_SERVE_* variables) become them."""

from __future__ import annotations

from dataclasses import dataclass

from promptseg.serving.gateway import key_digest
from promptseg.serving.settings import ServeSettings


@dataclass(frozen=True)
class ServeOptions:
    """How the application is deployed; `options_from` fills it from the serving settings.
    The three folders must be shared by every replica (the workspace on one machine, a shared volume on a cluster)."""

    tasks_dir: str
    audit_dir: str
    state_file: str
    host: str = "127.0.0.1"
    port: int = 8000
    replicas: int = 1
    cpus_per_replica: float = 0.25
    gpus_per_replica: float = 0.0
    max_ongoing_requests: int = 8
    max_queued_requests: int = 32
    max_batch_size: int = 8
    batch_wait_ms: float = 2.0
    max_body_mb: float = 256.0
    max_volume_mb: float = 1024.0
    cache_size: int = 128
    api_key_sha256: str | None = None  # the key itself never leaves the process that deploys


def options_from(settings: ServeSettings) -> ServeOptions:
    """The deploy options the serving settings describe; the API key becomes its hash."""
    key = settings.api_key.get_secret_value() if settings.api_key else None
    return ServeOptions(
        tasks_dir=str(settings.tasks_dir),
        audit_dir=str(settings.audit_dir),
        state_file=str(settings.state_file),
        host=settings.host,
        port=settings.port,
        replicas=settings.replicas,
        cpus_per_replica=settings.cpus_per_replica,
        gpus_per_replica=settings.gpus_per_replica,
        max_ongoing_requests=settings.max_ongoing_requests,
        max_queued_requests=settings.max_queued_requests,
        max_batch_size=settings.max_batch_size,
        batch_wait_ms=settings.batch_wait_ms,
        max_body_mb=settings.max_body_mb,
        max_volume_mb=settings.max_volume_mb,
        cache_size=settings.cache_size,
        api_key_sha256=key_digest(key) if key else None,
    )
