"""The exposure rules, without starting Ray. The key rule (promptseg.serving.options), wherever the application is
built: `options_from`, the Serve import path `application()` (a Serve config file or RayService) and `promptseg
serve start` (which refuses before it would start a Ray head); a running Serve's host is stood in for. A Ray node
(pipelines.cluster) beyond loopback needs Ray's token authentication; one on loopback is kept there
(tests/integration/test_cluster_exposure.py measures its sockets)."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from pydantic import SecretStr
from typer.testing import CliRunner

from pipelines import cluster
from pipelines.cli import app as cli
from promptseg.serving import app
from promptseg.serving.options import (
    API_KEY_VARIABLE,
    InsecureBinding,
    WeakApiKey,
    check_api_key,
    is_loopback,
    options_from,
)
from promptseg.serving.settings import ServeSettings

INFRA = Path(__file__).resolve().parents[2] / "infra"
GOOD_KEY = "4f1c9a7be02d5836a1f0c4e9b7d2a653"  # 32 hexadecimal digits, as `openssl rand -hex 16` gives


def _settings(host: str = "127.0.0.1", key: str | None = None) -> ServeSettings:
    return ServeSettings(host=host, api_key=SecretStr(key) if key is not None else None)


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "localhost", "::1", "[::1]"])
def test_loopback_needs_no_key(host: str) -> None:
    assert is_loopback(host)
    assert options_from(_settings(host)).api_key_sha256 is None


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.2", "promptseg.example.org"])
def test_beyond_loopback_needs_a_key(host: str) -> None:
    assert not is_loopback(host)
    with pytest.raises(InsecureBinding, match=API_KEY_VARIABLE):
        options_from(_settings(host))
    options = options_from(_settings(host, GOOD_KEY))
    assert options.api_key_sha256 == hashlib.sha256(GOOD_KEY.encode()).hexdigest()
    assert options.settings.api_key is None  # only the hash travels to the replicas


@pytest.mark.parametrize(
    "key",
    ["replace-me", "REPLACE_ME", "changeme", "change-me-to-a-long-random-value", "secret", "your-api-key", "..."],
)
def test_placeholder_keys_are_refused_whatever_the_host(key: str) -> None:
    for host in ("127.0.0.1", "0.0.0.0"):
        with pytest.raises(WeakApiKey, match=f"{API_KEY_VARIABLE} is a placeholder"):
            options_from(_settings(host, key))


def test_short_keys_are_refused() -> None:
    with pytest.raises(WeakApiKey, match=f"{API_KEY_VARIABLE} has 23 characters, fewer than 24"):
        check_api_key(GOOD_KEY[:23])
    check_api_key(GOOD_KEY[:24])
    assert issubclass(WeakApiKey, InsecureBinding)  # the CLI's user error (exit 2) covers both


def test_an_empty_key_is_no_key() -> None:
    assert options_from(_settings("127.0.0.1", "")).api_key_sha256 is None
    with pytest.raises(InsecureBinding, match="beyond loopback"):
        options_from(_settings("0.0.0.0", ""))


def test_no_key_is_shipped_under_infra() -> None:
    """No manifest carries an API key, not even a placeholder the endpoint would refuse: the Secret is created from
    the operator's own values (infra/k8s/config.yaml says how), and compose requires the key from the environment."""
    shipped = [
        path
        for path in INFRA.rglob("*.yaml")
        for document in yaml.safe_load_all(path.read_text())
        if document and API_KEY_VARIABLE in document.get("stringData", {}) | document.get("data", {})
    ]
    assert shipped == []
    compose = yaml.safe_load((INFRA / "compose.yaml").read_text())
    assert compose["x-platform"]["environment"][API_KEY_VARIABLE].startswith("${PROMPTSEG_SERVE_API_KEY:?")


def test_the_serve_import_path_applies_the_rule(monkeypatch: pytest.MonkeyPatch) -> None:
    """`application()` reads the nodes' environment, as a RayService's pods give it (infra/k8s/config.yaml)."""
    monkeypatch.setenv("PROMPTSEG_SERVE_HOST", "0.0.0.0")
    monkeypatch.delenv(API_KEY_VARIABLE, raising=False)
    with pytest.raises(InsecureBinding, match="beyond loopback"):
        app.application()
    monkeypatch.setenv(API_KEY_VARIABLE, "replace-me")
    with pytest.raises(WeakApiKey):
        app.application()
    monkeypatch.setenv(API_KEY_VARIABLE, GOOD_KEY)
    assert app.application() is not None


def test_the_host_a_running_serve_binds_to_counts_too(monkeypatch: pytest.MonkeyPatch) -> None:
    """A Serve config or RayService sets `http_options.host` itself; PROMPTSEG_SERVE_HOST may still say loopback."""
    monkeypatch.delenv("PROMPTSEG_SERVE_HOST", raising=False)
    monkeypatch.delenv(API_KEY_VARIABLE, raising=False)
    monkeypatch.setattr(app, "running_serve_host", lambda: "0.0.0.0")
    with pytest.raises(InsecureBinding, match=r"serving on 0\.0\.0\.0"):
        app.application()
    monkeypatch.setattr(app, "running_serve_host", lambda: "127.0.0.1")
    assert app.application() is not None
    with pytest.raises(InsecureBinding):  # options built by hand, without options_from
        app.deploy("unused", "unused", "champion", app.ServeOptions(_settings("0.0.0.0")))


def test_serve_start_refuses_a_placeholder_key_before_starting_ray(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for variable in ("PROMPTSEG_WORKSPACE", "PROMPTSEG_RESOLUTION"):  # the command exports the ones in force
        monkeypatch.setenv(variable, os.environ[variable])
    monkeypatch.setenv(API_KEY_VARIABLE, "replace-me")
    result = CliRunner().invoke(cli, ["--workspace", str(tmp_path), "serve", "start"])
    assert result.exit_code == 2, result.output
    [line] = result.stderr.splitlines()
    assert line.startswith("error: ") and f"{API_KEY_VARIABLE} is a placeholder" in line
    assert not list(tmp_path.rglob("ray.json"))  # no Ray head was started


@pytest.mark.parametrize("start", [cluster.start_head, cluster.start_worker_node])
def test_a_ray_node_beyond_loopback_needs_token_authentication(
    start: Callable[..., object], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    arguments = (tmp_path,) if start is cluster.start_head else ("192.0.2.2:6379", 1, tmp_path / "node.log")
    with pytest.raises(cluster.InsecureRayNode, match="RAY_AUTH_MODE=token"):
        start(*arguments, host="192.0.2.2")
    assert list(tmp_path.iterdir()) == []  # refused before anything started


def test_a_loopback_ray_node_keeps_its_loopback_address() -> None:
    """Ray (2.60, Linux) swaps a loopback address for the machine's routable one unless its local-only switch is
    set; it is set for the nodes' processes (and, by `connect`, for a process connecting to a loopback head)."""
    assert cluster.LOCAL_ONLY == {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    assert cluster.LOCAL_ONLY.items() <= cluster._node_environment("127.0.0.1").items()
