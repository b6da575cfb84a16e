"""The Serve application as a whole: `application()` for a Serve config file or a KubeRay RayService (import path
`promptseg.serving.app:application`), `deploy` onto the connected Ray cluster (refused beyond loopback without an
API key) and `undeploy`. The routes are promptseg.serving.endpoint's; the options, promptseg.serving.options'.
"""

from __future__ import annotations

import contextlib
import ipaddress

from ray import serve
from ray.serve import Application
from ray.serve.exceptions import RayServeException

from promptseg.registry.settings import RegistrySettings
from promptseg.registry.versions import load_version
from promptseg.serving.endpoint import PromptSegEndpoint
from promptseg.serving.options import ServeOptions, options_from
from promptseg.serving.served_model import check_recipe
from promptseg.serving.settings import ServeSettings

APP_NAME = "promptseg"

__all__ = ["APP_NAME", "InsecureBinding", "ServeOptions", "application", "deploy", "options_from", "undeploy"]


class InsecureBinding(ValueError):
    """The endpoint would listen beyond loopback without an API key."""


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    with contextlib.suppress(ValueError):
        return ipaddress.ip_address(host).is_loopback
    return False


def application(args: dict[str, str] | None = None) -> Application:
    """The application configured by the PROMPTSEG_* / MLFLOW_TRACKING_URI environment of the cluster's nodes;
    `args` may name another `alias`."""
    registry = RegistrySettings()
    alias = (args or {}).get("alias", "champion")
    return PromptSegEndpoint.bind(registry.tracking_uri, registry.model_name, alias, options_from(ServeSettings()))


def deploy(
    tracking_uri: str,
    model_name: str,
    alias: str,
    options: ServeOptions,
    name: str = APP_NAME,
    route_prefix: str = "/",
) -> str:
    """Run the application on the connected Ray cluster; return its base URL. Redeploying with changed options
    rolls the replicas over (Serve starts new ones before stopping old ones). A version trained under another
    preparation recipe is refused (`IncompatibleModel`) before anything is deployed."""
    check_recipe(load_version(tracking_uri, model_name, alias))  # refused here with its reason, not in a replica
    if not _is_loopback(options.settings.host) and not options.api_key_sha256:
        raise InsecureBinding(
            f"serving on {options.settings.host} (beyond loopback) needs an API key: set PROMPTSEG_SERVE_API_KEY"
        )
    serve.start(http_options={"host": options.settings.host, "port": options.settings.port})
    deployment = PromptSegEndpoint.options(
        num_replicas=options.settings.replicas,
        ray_actor_options={
            "num_cpus": options.settings.cpus_per_replica,
            "num_gpus": options.settings.gpus_per_replica,
        },
        max_ongoing_requests=options.settings.max_ongoing_requests,
        max_queued_requests=options.settings.max_queued_requests,
    )
    serve.run(deployment.bind(tracking_uri, model_name, alias, options), name=name, route_prefix=route_prefix)
    return f"http://{options.settings.host}:{options.settings.port}{route_prefix.rstrip('/')}"


def undeploy() -> None:
    """Delete the application if Serve runs on this Ray instance (nothing to do otherwise)."""
    with contextlib.suppress(RayServeException):
        serve.delete(APP_NAME)
