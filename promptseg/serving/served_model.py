"""The registered version a replica serves, and how every replica follows the alias after a reload.

A replica loads `models:/<name>@<alias>` at start. `reload()` (POST /v1/reload) resolves the alias again; when it
moved, the replica loads the new version, swaps it in as one immutable `Serving` snapshot and records the version
in a small state file (written aside, then renamed) that every replica sees. A version whose model card records
another preparation recipe than this code's (storage.preparation.RECIPE_VERSION) is refused with
`IncompatibleModel`: it would be served pixels prepared differently from those it was trained on. Each request
starts with `current()`, which compares that file's version with its own (one stat while nothing changed) and
catches up first, so all replicas follow one reload. A request keeps the snapshot it started with: requests in
flight finish on the old version, later ones carry the new one, and since task encodings are cached per model
version none is reused across versions.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

from promptseg.inference.predictor import Predictor
from promptseg.registry.versions import LoadedModel, load_version, resolve_version
from storage.preparation import RECIPE_VERSION


class IncompatibleModel(Exception):
    """The version was trained on pixels prepared by another recipe than the one this code serves with."""


def check_recipe(model: LoadedModel) -> LoadedModel:
    """`model` when its card records this code's preparation recipe; IncompatibleModel otherwise."""
    recorded = (model.model_card.get("preparation") or {}).get("recipe_version")
    if recorded != RECIPE_VERSION:
        raise IncompatibleModel(
            f"model {model.name} version {model.version} was trained on pixels prepared by recipe "
            f"{recorded or 'unrecorded'}, "
            f"this code prepares them by recipe {RECIPE_VERSION}: serve it with the release it was trained with, "
            "or train a new version"
        )
    return model


@dataclass(frozen=True)
class Serving:
    model: LoadedModel
    predictor: Predictor

    @property
    def version(self) -> str:
        return self.model.version

    @property
    def preparation(self) -> dict:
        """How the model's training data was prepared (model card): recipe version, CT window, target spacing."""
        return self.model.model_card.get("preparation") or {}


class ServedModel:
    def __init__(self, tracking_uri: str, model_name: str, alias: str, state_file: Path, batch_size: int) -> None:
        self.tracking_uri, self.model_name, self.alias = tracking_uri, model_name, alias
        self.state_file = Path(state_file)
        self.batch_size = batch_size
        self._lock = threading.Lock()
        self._serving = self._load(alias)
        self._state_seen = self._state_stamp()

    def _load(self, alias_or_version: str) -> Serving:
        model = check_recipe(load_version(self.tracking_uri, self.model_name, alias_or_version))
        return Serving(model, Predictor(model.network, batch_size=self.batch_size))

    def _state_stamp(self) -> tuple[int, int] | None:
        try:
            stat = self.state_file.stat()
        except FileNotFoundError:
            return None
        return stat.st_mtime_ns, stat.st_size

    def _swap_to(self, version: str) -> None:
        with self._lock:
            if self._serving.version != version:
                self._serving = self._load(version)

    def current(self) -> Serving:
        """The snapshot for one request, after catching up with a reload another replica recorded."""
        stamp = self._state_stamp()
        if stamp is not None and stamp != self._state_seen:
            self._state_seen = stamp
            recorded = json.loads(self.state_file.read_text())
            if recorded["alias"] == self.alias:
                self._swap_to(recorded["version"])
        return self._serving

    def reload(self) -> tuple[str, str]:
        """Follow the alias to its version now; returns (previous version, serving version)."""
        previous = self._serving.version
        version = resolve_version(self.tracking_uri, self.model_name, self.alias)
        self._swap_to(version)
        self._record(version)
        return previous, version

    def _record(self, version: str) -> None:
        self.state_file.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=self.state_file.parent, suffix=".partial", delete=False) as handle:
            json.dump({"alias": self.alias, "version": version}, handle)
        os.replace(handle.name, self.state_file)
        self._state_seen = self._state_stamp()
