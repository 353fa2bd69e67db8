"""The committed stubs match vae.proto, and `buf lint` is clean."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(importlib.util.find_spec("grpc_tools") is None, reason="grpcio-tools (dev extra) missing")
def test_generated_stubs_are_not_stale():
    proc = subprocess.run(
        [sys.executable, str(ROOT / "protos" / "generate.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr


@pytest.mark.skipif(shutil.which("npx") is None, reason="npx (Node.js) is not installed")
def test_buf_lint_is_clean():
    proc = subprocess.run(
        ["npx", "--yes", "@bufbuild/buf", "lint"],
        cwd=ROOT / "protos",
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_stubs_import_and_name_the_service():
    from protos.vae.v1 import vae_pb2, vae_pb2_grpc

    service = vae_pb2.DESCRIPTOR.services_by_name["VaeService"]
    assert service.full_name == "vae.v1.VaeService"
    assert {m.name for m in service.methods} == {
        "GetModelInfo",
        "Encode",
        "Decode",
        "Sample",
        "Reconstruct",
        "SampleStream",
        "ListModels",
        "LoadModel",
        "UnloadModel",
    }
    assert hasattr(vae_pb2_grpc, "VaeServiceStub")
