"""The model repository on disk: which models and versions exist, and which of them should be served.

Layout (Triton's): REPO/NAME/VERSION/ holds one exported model folder (manifest.json, encoder.onnx,
decoder.onnx); VERSION is a positive integer, and the highest is the newest. Anything else in REPO or in
REPO/NAME (hidden staging folders of an export in progress, notes, non-integer folders) is ignored.
An optional REPO/NAME/config.json chooses the version policy of that model:

    {"version_policy": "latest"}          the newest version only (the default)
    {"version_policy": "latest:2"}        the two newest versions
    {"version_policy": "all"}             every version
    {"version_policy": "specific:1,3"}    exactly these versions (those present)

`--version-policy` gives the policy of models without a config file. `--model-dir DIR` is a repository
of one: the model named by its manifest, version 1. Nothing here loads a graph: this module only reads
folder names and small JSON files, so a scan is cheap enough to poll.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from service.errors import ModelError, SettingsError

__all__ = ["VersionPolicy", "ModelEntry", "VersionSource", "scan_repository", "single_model",
           "CONFIG_NAME", "MODEL_NAME_RE"]

CONFIG_NAME = "config.json"
MODEL_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")


@dataclass(frozen=True)
class VersionPolicy:
    """Which versions of a model are served: kind latest (the `count` newest), all, or specific."""

    kind: str = "latest"
    count: int = 1
    versions: tuple[int, ...] = ()

    @classmethod
    def parse(cls, text: str, where: str = "--version-policy") -> VersionPolicy:
        t = text.strip().lower()
        kind, _, arg = t.partition(":")
        try:
            if kind == "latest":
                n = int(arg) if arg else 1
                if n < 1:
                    raise ValueError
                return cls("latest", n)
            if kind == "all" and not arg:
                return cls("all")
            if kind == "specific" and arg:
                vs = tuple(sorted({int(v) for v in arg.split(",")}))
                if any(v < 1 for v in vs):
                    raise ValueError
                return cls("specific", 0, vs)
        except ValueError:
            pass
        raise SettingsError(f"{where}: {text!r} is not a version policy; use latest, latest:N, all or "
                            "specific:V1,V2")

    def select(self, available: list[int]) -> list[int]:
        """The versions to serve among `available` (sorted ascending)."""
        if self.kind == "all":
            return list(available)
        if self.kind == "specific":
            return [v for v in available if v in self.versions]
        return list(available[-self.count:])

    def __str__(self) -> str:
        if self.kind == "latest":
            return "latest" if self.count == 1 else f"latest:{self.count}"
        if self.kind == "specific":
            return "specific:" + ",".join(map(str, self.versions))
        return "all"


@dataclass(frozen=True)
class VersionSource:
    """One version folder on disk."""

    name: str
    version: int
    path: Path


@dataclass
class ModelEntry:
    """One model of the repository: every version folder found, and the policy choosing among them."""

    name: str
    policy: VersionPolicy
    available: list[int] = field(default_factory=list)
    sources: dict[int, VersionSource] = field(default_factory=dict)

    @property
    def wanted(self) -> list[int]:
        return self.policy.select(self.available)


def _policy(folder: Path, default: VersionPolicy) -> VersionPolicy:
    path = folder / CONFIG_NAME
    if not path.is_file():
        return default
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelError(f"{path}: not readable JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ModelError(f"{path}: must hold a JSON object")
    text = data.get("version_policy", str(default))
    if not isinstance(text, str):
        raise ModelError(f"{path}: version_policy must be a string such as \"latest:2\"")
    try:
        return VersionPolicy.parse(text, where=f"{path}: version_policy")
    except SettingsError as exc:
        raise ModelError(str(exc)) from None


def scan_repository(repository: str | Path, default: VersionPolicy) -> tuple[dict[str, ModelEntry],
                                                                                dict[str, str]]:
    """Every model folder of the repository -> its entry; plus models whose folder is unusable (a bad
    config.json) -> the reason. Raises SettingsError when the repository itself is not a folder."""
    repo = Path(repository)
    if not repo.is_dir():
        raise SettingsError(f"--model-repository {repo}: no such folder")
    models: dict[str, ModelEntry] = {}
    broken: dict[str, str] = {}
    for folder in sorted(repo.iterdir()):
        if not folder.is_dir() or folder.name.startswith(".") or not MODEL_NAME_RE.match(folder.name):
            continue
        try:
            policy = _policy(folder, default)
        except ModelError as exc:
            broken[folder.name] = str(exc)
            continue
        entry = ModelEntry(folder.name, policy)
        for sub in folder.iterdir():
            if sub.is_dir() and sub.name.isdigit() and int(sub.name) > 0:
                v = int(sub.name)
                entry.sources[v] = VersionSource(folder.name, v, sub)
        entry.available = sorted(entry.sources)
        models[folder.name] = entry
    return models, broken


def single_model(model_dir: str | Path, name: str) -> dict[str, ModelEntry]:
    """`--model-dir`: a repository of one model, version 1."""
    src = VersionSource(name, 1, Path(model_dir))
    return {name: ModelEntry(name, VersionPolicy(), [1], {1: src})}
