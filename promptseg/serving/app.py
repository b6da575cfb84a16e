"""The Serve application as a whole: `application()` for a Serve config file or a KubeRay RayService (import path
`promptseg.serving.app:application`), `deploy` onto the connected Ray cluster and `undeploy`. The routes are
promptseg.serving.endpoint's; the options and the key rule (no endpoint beyond loopback without an API key, no
placeholder or short key), promptseg.serving.options'. Both builders apply the rule before anything is deployed.
"""

from __future__ import annotations

import contextlib

import ray
from ray import serve
from ray.serve import Application
from ray.serve.context import _get_global_client
from ray.serve.exceptions import RayServeException

from promptseg.registry.settings import RegistrySettings
from promptseg.registry.versions import load_version
from promptseg.serving.endpoint import PromptSegEndpoint
from promptseg.serving.options import InsecureBinding, ServeOptions, WeakApiKey, check_binding, options_from
from promptseg.serving.served_model import check_recipe
from promptseg.serving.settings import ServeSettings

APP_NAME = "promptseg"

__all__ = [
    "APP_NAME",
    "InsecureBinding",
    "ServeOptions",
    "WeakApiKey",
    "application",
    "check_exposure",
    "deploy",
    "options_from",
    "undeploy",
]


def running_serve_host() -> str | None:
    """The host the running Serve instance's HTTP proxies bind to (a Serve config's or a RayService's
    `http_options.host`), or None when this process is not connected to a Ray cluster running Serve. Serve has no
    public call for it; its client reads it from the controller."""
    if not ray.is_initialized():
        return None
    client = _get_global_client(raise_if_no_controller_running=False)
    return client.http_config.host if client is not None else None


def check_exposure(options: ServeOptions) -> None:
    """The key rule for the options' host and for the host a running Serve instance binds to already (set by a
    Serve config file or RayService's `http_options`, or by an earlier `serve.start`, which later ones keep)."""
    check_binding(options.settings.host, options.api_key_sha256)
    if (host := running_serve_host()) is not None:
        check_binding(host, options.api_key_sha256)


def application(args: dict[str, str] | None = None) -> Application:
    """The application configured by the PROMPTSEG_* / MLFLOW_TRACKING_URI environment of the cluster's nodes;
    `args` may name another `alias`. Refused by the key rule (`options_from`, `check_exposure`) before it is built."""
    registry = RegistrySettings()
    alias = (args or {}).get("alias", "champion")
    options = options_from(ServeSettings())
    check_exposure(options)
    return PromptSegEndpoint.bind(registry.tracking_uri, registry.model_name, alias, options)


def deploy(
    tracking_uri: str,
    model_name: str,
    alias: str,
    options: ServeOptions,
    name: str = APP_NAME,
    route_prefix: str = "/",
) -> str:
    """Run the application on the connected Ray cluster; return its base URL. Redeploying with changed options
    rolls the replicas over (Serve starts new ones before stopping old ones). An endpoint beyond loopback without
    an API key (`InsecureBinding`) and a version trained under another preparation recipe (`IncompatibleModel`)
    are refused before anything is deployed."""
    check_exposure(options)  # options built by hand skip options_from
    check_recipe(load_version(tracking_uri, model_name, alias))  # refused here with its reason, not in a replica
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
