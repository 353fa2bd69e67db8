"""The pip configuration carried into the image build (scripts/pip_build_config.py): index locations and
the CA bundle only; a constraints file and other host-only files stay behind. The real `pip config
list` reads a fake pip.conf here; the full image build runs only in `make test-container`."""

from __future__ import annotations

import configparser
import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

from deploy_helpers import ROOT

SCRIPT = ROOT / "scripts" / "pip_build_config.py"


def _module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("pip_build_config", SCRIPT)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["pip_build_config"] = mod  # dataclasses look their module up by name
    spec.loader.exec_module(mod)
    return mod


def test_filter_keeps_index_locations_and_drops_host_files(tmp_path: Path) -> None:
    wheels, index = tmp_path / "wheels", tmp_path / "pypi" / "simple"
    wheels.mkdir()
    index.mkdir(parents=True)
    cert = tmp_path / "ca.pem"
    cert.write_text("-----BEGIN CERTIFICATE-----\n")
    listing = "\n".join([
        "global.index-url='https://mirror.example/simple'",
        f"global.extra-index-url='file://{index} file:///nowhere/simple https://other.example/simple'",
        f"global.constraint='{tmp_path}/constraints-only-on-the-host.txt'",
        "global.requirement='/host/reqs.txt'",
        f"global.cert='{cert}'",
        "global.client-cert='/host/me.pem'",
        "install.trusted-host='mirror.example'",
        f":env:.find-links='{wheels} /gone/wheels'",
        ":env:.default-timeout='180'",
    ])
    cfg = _module().filter_pip_config(listing)
    assert cfg.sections == {
        "global": {"index-url": "https://mirror.example/simple",
                   "extra-index-url": f"file://{index} https://other.example/simple",
                   "find-links": str(wheels), "default-timeout": "180"},
        "install": {"trusted-host": "mirror.example"},
    }
    assert cfg.cert == str(cert)
    assert cfg.mounts == sorted([str(index.parent), str(wheels)])  # a local index: its root is mounted
    dropped = "\n".join(cfg.dropped)
    for gone in ("constraint", "requirement", "client-cert", "/nowhere/simple", "/gone/wheels"):
        assert gone in dropped, gone
    ini = configparser.ConfigParser(interpolation=None)
    ini.read_string(cfg.ini())
    assert "constraint" not in ini["global"] and ini["install"]["trusted-host"] == "mirror.example"


def test_missing_cert_is_dropped_not_passed() -> None:
    cfg = _module().filter_pip_config("global.cert='/no/such/ca.pem'\n")
    assert cfg.cert is None and cfg.sections == {} and "no such file" in cfg.dropped[0]


def test_script_on_a_fake_pip_conf_naming_a_missing_constraints_file(tmp_path: Path) -> None:
    """What broke the build on a second machine: its pip.conf named a constraints file that exists only
    there. The script runs the real `pip config list` on such a file."""
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    conf = tmp_path / "pip.conf"
    conf.write_text("[global]\nindex-url = https://mirror.example/simple\n"
                    f"constraint = {tmp_path}/host-only/constraints.txt\nfind-links = {wheels}\n")
    work = tmp_path / "work"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env.update(PIP_CONFIG_FILE=str(conf), HOME=str(tmp_path), XDG_CONFIG_HOME=str(tmp_path / "xdg"))
    proc = subprocess.run([sys.executable, str(SCRIPT), str(work)], capture_output=True, text=True,
                          env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    opts = proc.stdout.splitlines()
    assert opts[0] == f"--secret=id=pip_conf,src={work / 'pip.conf'}"
    assert f"--volume={wheels}:{wheels}:ro" in opts
    carried = configparser.ConfigParser(interpolation=None)
    carried.read(work / "pip.conf")
    assert carried["global"]["index-url"] == "https://mirror.example/simple"
    assert carried["global"]["find-links"] == str(wheels)
    assert not any("constraint" in carried[s] for s in carried.sections())
    assert "not carried into the build: global.constraint" in proc.stderr
    bad = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path / "nope")], capture_output=True,
                         text=True, env=env, timeout=60)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1


def _make_containerdeps(path: str) -> subprocess.CompletedProcess[str]:
    make = shutil.which("make")
    assert make is not None
    return subprocess.run([make, "-s", "-C", str(ROOT), "containerdeps"], capture_output=True, text=True,
                          env={"PATH": path, "HOME": os.environ.get("HOME", "/tmp")}, timeout=60)


def test_make_containerdeps_installs_only_what_is_missing(tmp_path: Path) -> None:
    """`make test-container` depends on `containerdeps`: nothing to do when the tools are there; without
    them and without apt-get (or root) it stops with one line naming the packages."""
    have = tmp_path / "have"
    have.mkdir()
    for tool in ("mmdebstrap", "buildah", "podman"):
        (have / tool).write_text("#!/bin/sh\nexit 0\n")
        (have / tool).chmod(0o755)
    ok = _make_containerdeps(str(have))
    assert ok.returncode == 0 and ok.stdout == "" and ok.stderr == "", ok.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    missing = _make_containerdeps(str(empty))
    assert missing.returncode != 0
    assert "make test-container needs mmdebstrap, buildah and podman" in missing.stderr
    packages = "mmdebstrap buildah podman uidmap fuse-overlayfs slirp4netns runc"
    assert f"apt-get install {packages}" in missing.stderr
