"""The import rules between the packages (docs/CONTRACTS.md), checked statically and at run time."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("contracts", "trainer", "exporter", "service", "client", "protos", "vae_cli")
# package -> siblings it may import; `contracts` is the numpy-only core at the bottom.
ALLOWED: dict[str, set[str]] = {
    "contracts": set(),
    "trainer": {"contracts"},
    "exporter": {"trainer", "contracts"},
    "service": {"protos", "contracts"},
    "client": {"protos", "contracts"},
    "protos": set(),
    "vae_cli": set(),  # subcommands are imported lazily, by name, through importlib
}
NEVER_TORCH = ("contracts", "service", "client", "protos", "vae_cli")
# The core may import only the standard library, numpy, and Pillow / scikit-learn lazily (for PNG
# folders and the bundled digits); never torch, grpc or protobuf.
CORE_THIRD_PARTY = {"numpy", "PIL", "sklearn"}


def _imports(path: Path, package: str) -> set[str]:
    """Top-level names of every module imported anywhere in the file (function bodies included)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            names.add(package if node.level else (node.module or "").split(".")[0])
    return names


@pytest.mark.parametrize("package", PACKAGES)
def test_sibling_imports_follow_the_rules(package):
    files = [p for p in (ROOT / package).rglob("*.py") if "_pb2" not in p.name]
    assert files or package not in ("contracts", "service", "protos", "vae_cli"), f"{package} has no sources"
    problems = []
    for path in files:
        used = _imports(path, package)
        for sibling in (used & set(PACKAGES)) - {package} - ALLOWED[package]:
            problems.append(f"{path.relative_to(ROOT)} imports {sibling}")
        if package in NEVER_TORCH and "torch" in used:
            problems.append(f"{path.relative_to(ROOT)} imports torch")
    assert not problems, "\n".join(problems)


def _modules_loaded(packages: tuple[str, ...], extra: tuple[str, ...], forbidden: tuple[str, ...]) -> int:
    """Import every module of `packages` (and `extra`) in a fresh interpreter; fail if any top-level
    name in `forbidden` got loaded. Returns how many modules were imported."""
    code = (
        "import importlib, pkgutil, sys\n"
        f"mods = {list(extra)!r}\n"
        f"for name in {list(packages)!r}:\n"
        "    pkg = importlib.import_module(name)\n"
        "    mods += [name + '.' + m.name for m in pkgutil.iter_modules(pkg.__path__)]\n"
        "for m in mods:\n"
        "    importlib.import_module(m)\n"
        f"bad = sorted(m for m in sys.modules if m.split('.')[0] in {forbidden!r})\n"
        "print(len(mods), bad[:5])\n"
        "sys.exit(1 if bad else 0)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return int(proc.stdout.split()[0])


def test_serving_and_client_modules_do_not_load_torch():
    """Importing every service and client module (and the CLI entry) must not bring torch in."""
    n = _modules_loaded(("service", "client"), ("vae_cli.main", "protos.vae.v1"),
                        ("torch", "trainer", "exporter"))
    assert n > 10


def test_contracts_imports_only_the_standard_library_and_numpy():
    problems = []
    for path in (ROOT / "contracts").rglob("*.py"):
        for name in _imports(path, "contracts") - {"contracts"}:
            if name not in sys.stdlib_module_names and name not in CORE_THIRD_PARTY:
                problems.append(f"{path.relative_to(ROOT)} imports {name}")
    assert not problems, "\n".join(problems)


def test_contracts_loads_without_torch_grpc_or_protobuf():
    """Importing every module of the core brings in none of the heavy stacks (nor a sibling)."""
    heavy = ("torch", "grpc", "google", "onnxruntime", "trainer", "exporter", "service", "client", "protos")
    assert _modules_loaded(("contracts",), (), heavy) >= 6
