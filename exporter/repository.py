"""`vae export --repository REPO --name NAME`: write the model folder as REPO/NAME/VERSION/.

The layout is Triton's: one folder per model, one integer-named folder per version. VERSION is one more
than the largest integer folder already there (1 for a new model); the manifest keeps its own version
string. The version folder appears whole (export_model stages it beside the target and renames it into
place), so a server polling the repository never sees half of one. One exporter writes a given model at
a time: two writers racing for the same NAME could pick the same number.
"""

from __future__ import annotations

import re
from pathlib import Path

from exporter.errors import ExportError

__all__ = ["next_version", "version_dir", "MODEL_NAME_RE"]

# Model names travel in request fields, metric labels and Open Inference Protocol names (NAME-encoder).
MODEL_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")


def _versions(model_folder: Path) -> list[int]:
    if not model_folder.is_dir():
        return []
    return sorted(int(p.name) for p in model_folder.iterdir() if p.is_dir() and p.name.isdigit())


def next_version(repository: Path, name: str) -> int:
    """The version number the next export of `name` gets: max existing + 1, or 1."""
    found = _versions(Path(repository) / name)
    return (found[-1] + 1) if found else 1


def version_dir(repository: Path, name: str, version: int | None = None) -> tuple[Path, int]:
    """(REPO/NAME/VERSION, VERSION) for an export; `version` None picks the next one. Refuses a bad
    name, a repository path that is a file, and an explicit version that already exists."""
    if not MODEL_NAME_RE.match(name):
        raise ExportError(f"--name {name!r}: use 1-64 letters, digits, '-' and '_' (starting with a letter "
                          "or digit)")
    repo = Path(repository)
    if repo.exists() and not repo.is_dir():
        raise ExportError(f"--repository {repo}: exists and is not a folder")
    if version is None:
        version = next_version(repo, name)
    elif version < 1:
        raise ExportError(f"--repository-version must be >= 1, got {version}")
    elif (repo / name / str(version)).exists():
        raise ExportError(f"{repo / name / str(version)} exists: versions are never overwritten; "
                          "leave --repository-version out to take the next number")
    return repo / name / str(version), version

