"""The pip configuration an image build may carry from this machine (used by scripts/container_test.sh).

The host's effective pip config (`pip config list`: its files and PIP_* variables) often names files that
exist only on the host — a constraints file, a requirements file, a client certificate — and pip inside the
build fails on them. Only what the build needs to reach a package index is carried: index-url,
extra-index-url, find-links, trusted-host, no-index, proxy, timeout and retries; `cert` becomes the
`pip_ca` build secret. Local indexes and find-links folders are kept only when they exist here (they are
bind-mounted read-only at the same path); everything else is dropped and listed on stderr.

usage: python scripts/pip_build_config.py WORK_DIR
  writes WORK_DIR/pip.conf and prints one buildah option per line (--secret=..., --volume=...).
"""

from __future__ import annotations

import configparser
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from io import StringIO

__all__ = ["CARRIED", "LOCATION_KEYS", "BuildPipConfig", "filter_pip_config", "build_options", "main"]

# Options that only say where and how to reach an index; none of them names a host-only file.
CARRIED = ("index-url", "extra-index-url", "find-links", "trusted-host", "no-index", "proxy", "timeout",
           "default-timeout", "retries")
# Options whose values are index locations: URLs, or local paths that must exist to be carried.
LOCATION_KEYS = ("index-url", "extra-index-url", "find-links")


@dataclass
class BuildPipConfig:
    sections: dict[str, dict[str, str]] = field(default_factory=dict)
    cert: str | None = None
    mounts: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)

    def ini(self) -> str:
        cfg = configparser.ConfigParser(interpolation=None)
        for section, values in self.sections.items():
            cfg[section] = values
        buf = StringIO()
        cfg.write(buf)
        return buf.getvalue()


def _local_path(item: str) -> str | None:
    """The local path an index location names, or None for a remote URL."""
    if item.startswith("file://"):
        return item[len("file://"):]
    if "://" in item:
        return None
    return item


def filter_pip_config(listing: str, *, isdir: Callable[[str], bool] = os.path.isdir,
                      isfile: Callable[[str], bool] = os.path.isfile) -> BuildPipConfig:
    """Filter the text of `pip config list` (lines `section.key='value'`; PIP_* variables appear
    under `:env:`, which becomes the `global` section)."""
    out = BuildPipConfig()
    mounts: set[str] = set()
    for line in listing.splitlines():
        key, sep, value = line.partition("=")
        if not sep:
            continue
        value = value.strip().strip("'\"")
        section, _, name = key.strip().rpartition(".")
        section = "global" if section in (":env:", "") else section
        if name == "cert":
            if isfile(value):
                out.cert = value
            else:
                out.dropped.append(f"{key}={value} (no such file)")
            continue
        if name not in CARRIED:
            out.dropped.append(f"{key}={value}")
            continue
        if name in LOCATION_KEYS:
            kept = []
            for item in value.split():
                path = _local_path(item)
                if path is None:
                    kept.append(item)
                    continue
                mount = path.rstrip("/")
                # A local index's pages link to files beside it (../files/...): mount its root.
                if name.endswith("index-url") and os.path.basename(mount) == "simple":
                    mount = os.path.dirname(mount)
                if path.startswith("/") and isdir(path):
                    kept.append(item)
                    mounts.add(mount)
                else:
                    out.dropped.append(f"{key} item {item} (not a folder here)")
            if not kept:
                continue
            value = " ".join(kept)
        out.sections.setdefault(section, {})[name] = value
    out.mounts = sorted(mounts)
    return out


def build_options(cfg: BuildPipConfig, conf_path: str) -> list[str]:
    opts = [f"--secret=id=pip_conf,src={conf_path}"]
    if cfg.cert:
        opts.append(f"--secret=id=pip_ca,src={cfg.cert}")
    opts += [f"--volume={p}:{p}:ro" for p in cfg.mounts]
    return opts


def main(argv: list[str]) -> int:
    if len(argv) != 1 or not os.path.isdir(argv[0]):
        print("usage: pip_build_config.py WORK_DIR (an existing folder)", file=sys.stderr)
        return 2
    listing = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True,
                             text=True, check=False).stdout
    cfg = filter_pip_config(listing)
    conf = os.path.join(argv[0], "pip.conf")
    with open(conf, "w", encoding="utf-8") as fh:
        fh.write(cfg.ini())
    for item in cfg.dropped:
        print(f"pip config: not carried into the build: {item}", file=sys.stderr)
    print("\n".join(build_options(cfg, conf)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
