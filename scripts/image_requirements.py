"""Print the pip requirements of pyproject extras, one per line, for the container build.

The image must not install what an extra lists and the image replaces (the CPU `onnxruntime` in the
serving image, which would shadow `onnxruntime-gpu`: both install the same module; or a torch pin
that the trainer image swaps for a CUDA build), so the Dockerfile reads the extras from pyproject.toml
here, the one source of truth, instead of keeping a second list that drifts.

    python3 scripts/image_requirements.py serve --drop onnxruntime --add onnxruntime-gpu==1.31.1
"""

from __future__ import annotations

import argparse
import re
import sys
import tomllib
from pathlib import Path

__all__ = ["requirement_name", "requirements", "main"]

_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


def requirement_name(spec: str) -> str:
    """The normalised project name of a requirement (PEP 503: lower case, runs of -_. -> -)."""
    match = _NAME.match(spec)
    if match is None:
        raise ValueError(f"not a requirement: {spec!r}")
    return re.sub(r"[-_.]+", "-", match.group(1)).lower()


def requirements(pyproject: Path, extras: list[str], drop: list[str], add: list[str]) -> list[str]:
    """Requirements of `extras` (deduplicated, in order) minus the names in `drop`, plus `add`."""
    data = tomllib.loads(pyproject.read_text(encoding="utf-8"))
    project = data.get("project", {})
    known = project.get("optional-dependencies", {})
    dropped = {requirement_name(d) for d in drop}
    out: list[str] = list(project.get("dependencies", []))
    for extra in extras:
        if extra not in known:
            raise KeyError(f"{pyproject}: no extra {extra!r} (known: {', '.join(sorted(known))})")
        out.extend(known[extra])
    seen: set[str] = set()
    kept: list[str] = []
    for spec in out:
        if requirement_name(spec) in dropped or spec in seen:
            continue
        seen.add(spec)
        kept.append(spec)
    kept.extend(a for a in add if a.strip())
    return kept


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("extras", nargs="+", help="extras of pyproject.toml, e.g. serve")
    parser.add_argument("--pyproject", type=Path, default=Path(__file__).resolve().parent.parent
                        / "pyproject.toml")
    parser.add_argument("--drop", action="append", default=[], help="project name to leave out")
    parser.add_argument("--add", action="append", default=[], help="requirement to append")
    args = parser.parse_args(argv)
    try:
        lines = requirements(args.pyproject, args.extras, args.drop, args.add)
    except (OSError, KeyError, ValueError, tomllib.TOMLDecodeError) as exc:
        print(f"image_requirements: {exc}", file=sys.stderr)
        return 2
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
