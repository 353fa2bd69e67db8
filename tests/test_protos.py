"""The committed stubs match vae.proto and the Open Inference Protocol files, and `buf lint` is clean."""

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


def test_inference_stubs_import_and_name_the_service():
    from protos.inference import grpc_service_pb2, grpc_service_pb2_grpc, model_config_pb2

    assert grpc_service_pb2.DESCRIPTOR.package == "inference"
    service = grpc_service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    assert service.full_name == "inference.GRPCInferenceService"
    assert {m.name for m in service.methods} == {
        "ServerLive",
        "ServerReady",
        "ModelReady",
        "ServerMetadata",
        "ModelMetadata",
        "ModelInfer",
        "ModelConfig",
        "RepositoryIndex",
        "RepositoryModelLoad",
        "RepositoryModelUnload",
    }
    # Field numbers are the wire contract (checked against tritonclient's in test_e2e_tritonclient.py).
    fields = grpc_service_pb2.ModelInferResponse.DESCRIPTOR.fields_by_name
    assert fields["raw_output_contents"].number == 6
    assert model_config_pb2.ModelConfig.DESCRIPTOR.fields_by_name["backend"].number == 17
    assert hasattr(grpc_service_pb2_grpc, "GRPCInferenceServiceStub")
