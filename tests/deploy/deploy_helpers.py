"""Readers for the deployment files: Dockerfile instructions, .dockerignore semantics, YAML manifests."""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

__all__ = ["ROOT", "Instruction", "Stage", "parse_dockerfile", "DockerIgnore", "load_yaml_docs",
           "k8s_objects", "by_kind", "pod_spec", "container", "env_of"]

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Instruction:
    keyword: str  # upper case
    args: str  # the rest of the logical line, continuations joined


@dataclass
class Stage:
    name: str
    base: str
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def one(self, keyword: str) -> Instruction:
        found = self.all(keyword)
        assert len(found) == 1, f"stage {self.name}: expected one {keyword}, found {len(found)}"
        return found[0]

    def env(self) -> dict[str, str]:
        """ENV KEY=VALUE pairs of this stage (the only ENV form the Dockerfile uses)."""
        out: dict[str, str] = {}
        for ins in self.all("ENV"):
            for token in shlex.split(ins.args):
                key, sep, value = token.partition("=")
                assert sep, f"ENV without '=': {ins.args!r}"
                out[key] = value
        return out

    def exec_form(self, keyword: str) -> list[str]:
        value = json.loads(self.one(keyword).args)
        assert isinstance(value, list), f"{keyword} is not in exec (JSON) form"
        return value


def parse_dockerfile(path: Path) -> tuple[dict[str, str], list[Stage]]:
    """(global ARG defaults, stages in order). Comments dropped, backslash continuations joined."""
    logical: list[str] = []
    buf = ""
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if buf and line.startswith("#"):
            continue  # a comment inside a continued instruction
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        logical.append(buf + line)
        buf = ""
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for text in logical:
        keyword, _, args = text.partition(" ")
        ins = Instruction(keyword.upper(), re.sub(r"\s+", " ", args).strip())
        if ins.keyword == "FROM":
            m = re.fullmatch(r"(\S+)(?:\s+AS\s+(\S+))?", ins.args, flags=re.IGNORECASE)
            assert m, f"unparsed FROM: {ins.args!r}"
            stages.append(Stage(name=m.group(2) or str(len(stages)), base=m.group(1)))
        elif not stages:
            assert ins.keyword == "ARG", f"{ins.keyword} before the first FROM"
            name, _, default = ins.args.partition("=")
            global_args[name] = default
        else:
            stages[-1].instructions.append(ins)
    return global_args, stages


class DockerIgnore:
    """The .dockerignore rules as the Docker/BuildKit and buildah context loaders apply them: patterns in
    order, the last one that matches a path (or one of its parent folders) decides; `!` re-includes."""

    def __init__(self, text: str) -> None:
        self.rules: list[tuple[bool, re.Pattern[str]]] = []
        for line in text.splitlines():
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            include = line.startswith("!")
            pattern = line[1:] if include else line
            self.rules.append((include, re.compile(self._regex(pattern.strip("/")))))

    @staticmethod
    def _regex(pattern: str) -> str:
        out = ""
        i = 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                out += "(?:.*/)?"
                i += 3
            elif pattern.startswith("**", i):
                out += ".*"
                i += 2
            elif pattern[i] == "*":
                out += "[^/]*"
                i += 1
            elif pattern[i] == "?":
                out += "[^/]"
                i += 1
            else:
                out += re.escape(pattern[i])
                i += 1
        return out + "$"

    def excluded(self, path: str) -> bool:
        parts = path.strip("/").split("/")
        prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
        result = False
        for include, rx in self.rules:
            if any(rx.match(p) for p in prefixes):
                result = not include
        return result


def load_yaml_docs(path: Path) -> list[Any]:
    with path.open(encoding="utf-8") as fh:
        return [d for d in yaml.safe_load_all(fh) if d is not None]


def k8s_objects(folder: Path) -> list[tuple[Path, dict[str, Any]]]:
    """Every object of every manifest under `folder`, kustomization files excluded."""
    out = []
    for path in sorted(folder.rglob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        out.extend((path, doc) for doc in load_yaml_docs(path))
    return out


def by_kind(folder: Path, kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for _, d in k8s_objects(folder)
             if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''} under {folder}, found {len(found)}"
    return found[0]


def pod_spec(obj: dict[str, Any]) -> dict[str, Any]:
    return obj["spec"]["template"]["spec"]


def container(obj: dict[str, Any]) -> dict[str, Any]:
    containers = pod_spec(obj)["containers"]
    assert len(containers) == 1, f"{obj['metadata']['name']}: expected one container"
    return containers[0]


def env_of(c: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in c.get("env", []) if "value" in e}
