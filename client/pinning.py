"""Version pinning: latents are not comparable across model versions, so a job must not mix them.

Every vae.v1 reply names the model and version that produced it. A `ModelPin` stamps the chosen model
and version on each request; with `sticky`, an unpinned client adopts the (model, version) of its first
reply (the GetModelInfo it sends before any work) and sends it from then on, so a version swap on the
server in the middle of a job never mixes versions: the pinned version keeps answering while it is
served (the server drains an old version only after routing has moved, and a pinned request still
reaches it until it is unloaded), and afterwards the job fails with NOT_FOUND instead of mixing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from client.errors import ProtocolError

__all__ = ["ModelPin", "VersionMixError", "job_pin"]


class VersionMixError(ProtocolError):
    """A reply came from another model version than the one this client is pinned to."""


@dataclass
class ModelPin:
    model: str = ""
    version: str = ""
    sticky: bool = False

    def stamp(self, request: Any) -> None:
        """Name the pinned model and version on a request (empty fields mean the server's default)."""
        if self.model:
            request.model = self.model
        if self.version:
            request.version = self.version

    def observe(self, reply: Any, method: str) -> None:
        """Adopt the first reply's version (sticky) or check a reply against the pin."""
        model, version = getattr(reply, "model", ""), getattr(reply, "version", "")
        if not version:
            return  # a server without model versions: nothing to pin
        if self.version:
            if version != self.version or (self.model and model != self.model):
                raise VersionMixError(f"{method}: reply from {model} version {version}, but this client "
                                      f"is pinned to {self.model or model} version {self.version}")
        elif self.sticky:
            self.model, self.version = model, version


def job_pin(folder: Path, model: str, version: str) -> tuple[str, str]:
    """The (model, version) a job pins: the one asked for, else the one its job.json recorded (a resumed
    job, or another process of the same sharded job, continues on the version the job started on),
    else none yet (the first reply decides)."""
    if version:
        return model, version
    try:
        params = json.loads((Path(folder) / "job.json").read_text()).get("params", {})
    except (OSError, ValueError, AttributeError):
        return model, version
    if isinstance(params, dict) and params.get("version") and (not model or params.get("model") == model):
        return str(params.get("model", "")), str(params["version"])
    return model, version
