"""What every replica of the Serve application is built with (`ServeOptions`) and how the serving settings
(PROMPTSEG_SERVE_* variables) become it: the settings less the API key, which only the deploying process holds, and
the key's SHA-256, which the replicas compare requests against.

The key rule lives here, so every way of building the application goes through it (`promptseg serve start`,
`deploy`, the Serve import path `application()` a Serve config file or a KubeRay RayService uses):
- a key, when given, is refused if it is a known placeholder or shorter than `MIN_API_KEY_LENGTH` (`WeakApiKey`);
- an endpoint bound beyond loopback without a key is refused (`InsecureBinding`).
"""

from __future__ import annotations

import contextlib
import ipaddress
from dataclasses import dataclass

from promptseg.serving.gateway import key_digest
from promptseg.serving.settings import ServeSettings

API_KEY_VARIABLE = "PROMPTSEG_SERVE_API_KEY"
MIN_API_KEY_LENGTH = 24
# Words of the values example files and tutorials ship (infra/k8s/config.yaml ships "replace-me"): a key containing
# one, letters compared without case or punctuation, is refused whatever its length.
PLACEHOLDER_WORDS = (
    "replaceme",
    "changeme",
    "changethis",
    "placeholder",
    "yourkey",
    "yourapikey",
    "example",
    "secret",
    "password",
)


class InsecureBinding(ValueError):
    """The endpoint would listen beyond loopback without an API key, or with a key anyone could guess."""


class WeakApiKey(InsecureBinding):
    """PROMPTSEG_SERVE_API_KEY is a placeholder or too short to keep anyone out."""


@dataclass(frozen=True)
class ServeOptions:
    """The serving settings without their API key, and the key's hash. The settings' four folders (tasks, jobs,
    audit, state) must be shared by every replica: the workspace on one machine, a shared volume on a cluster."""

    settings: ServeSettings
    api_key_sha256: str | None = None


def is_loopback(host: str) -> bool:
    """Whether `host` (a name or an address) only reaches this machine."""
    if host == "localhost":
        return True
    with contextlib.suppress(ValueError):
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    return False


def check_api_key(key: str) -> None:
    """Refuse a placeholder key (one containing a `PLACEHOLDER_WORDS` word, or only punctuation) or one shorter
    than `MIN_API_KEY_LENGTH` characters."""
    letters = "".join(character for character in key.lower() if character.isalnum())
    if not letters or any(word in letters for word in PLACEHOLDER_WORDS):
        raise WeakApiKey(f"{API_KEY_VARIABLE} is a placeholder; set a random key, e.g. `openssl rand -hex 32`")
    if len(key) < MIN_API_KEY_LENGTH:
        raise WeakApiKey(
            f"{API_KEY_VARIABLE} has {len(key)} characters, fewer than {MIN_API_KEY_LENGTH}; "
            "set a random key, e.g. `openssl rand -hex 32`"
        )


def check_binding(host: str, api_key_sha256: str | None) -> None:
    """Refuse an endpoint on `host` beyond loopback without an API key."""
    if not is_loopback(host) and not api_key_sha256:
        raise InsecureBinding(f"serving on {host} (beyond loopback) needs an API key: set {API_KEY_VARIABLE}")


def options_from(settings: ServeSettings) -> ServeOptions:
    """The deploy options the serving settings describe; the API key becomes its hash. Refused by the key rule
    (`check_api_key`, `check_binding`) before anything is built."""
    key = settings.api_key.get_secret_value() if settings.api_key else None
    if key:  # an empty PROMPTSEG_SERVE_API_KEY is no key
        check_api_key(key)
    options = ServeOptions(settings.model_copy(update={"api_key": None}), key_digest(key) if key else None)
    check_binding(options.settings.host, options.api_key_sha256)
    return options
