"""tritonclient (sync and aio), a real KServe v2 / Triton client, against a real `vae serve` on port 0.

tritonclient needs protobuf < 7 and the project's stubs protobuf >= 7.35, so it runs from the second
venv that `make test` builds (.venv-triton, or VAE_TRITON_PYTHON) as a subprocess: triton_checks.py
checks the project's v2 descriptors against tritonclient's own, drives the server, and writes its
outputs, which must equal the vae.v1 answers for the same inputs.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
from e2e_helpers import array, stub_for, tensor
from servers import ServeProcess

from protos.inference import grpc_service_pb2 as pb
from protos.inference import grpc_service_pb2_grpc as pb_grpc
from protos.vae.v1 import vae_pb2

ROOT = Path(__file__).resolve().parents[2]
TRITON_PYTHON = Path(os.environ.get("VAE_TRITON_PYTHON", ROOT / ".venv-triton" / "bin" / "python"))
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}

pytestmark = pytest.mark.skipif(
    not TRITON_PYTHON.exists(),
    reason=f"no tritonclient venv at {TRITON_PYTHON} (`make triton-venv` builds it; `make test` does)")


def _wire() -> dict:
    """The project's v2 declarations: every message field, enum value and RPC, for the comparison."""
    from protos.inference import model_config_pb2 as mc

    messages: dict[str, list] = {}

    def walk(d) -> None:
        if d.GetOptions().map_entry:
            return
        messages[d.full_name] = [
            [f.name, f.number, f.type, "repeated" if f.is_repeated else "optional",
             f.message_type.full_name if f.message_type else f.enum_type.full_name if f.enum_type else ""]
            for f in d.fields]
        for n in d.nested_types:
            walk(n)

    for file in (pb.DESCRIPTOR, mc.DESCRIPTOR):
        for d in file.message_types_by_name.values():
            walk(d)
    service = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    return {"messages": messages,
            "enums": {e.full_name: [[v.name, v.number] for v in e.values]
                      for e in mc.DESCRIPTOR.enum_types_by_name.values()},
            "service": service.full_name,
            "methods": {m.name: [m.input_type.full_name, m.output_type.full_name] for m in service.methods}}


@pytest.fixture()
def served(model_dir, tmp_path):
    with ServeProcess(model_dir, tmp_path / "vae-serve.log", "--grace-seconds", "2") as srv, \
            grpc.insecure_channel(srv.target) as ch:
        yield srv.port, ch


def test_tritonclient_sync_and_aio_match_vae_v1(served, tmp_path):
    port, ch = served
    v1 = stub_for(ch)
    v2 = pb_grpc.GRPCInferenceServiceStub(ch)
    deadline = time.monotonic() + 60  # warm-up runs in the background after "listening"
    while not v2.ServerReady(pb.ServerReadyRequest(), timeout=10).ready and time.monotonic() < deadline:
        time.sleep(0.1)
    name = v1.GetModelInfo(vae_pb2.GetModelInfoRequest(), timeout=10).model_name
    rng = np.random.default_rng(3)
    x = rng.random((6, 1, 8, 8), dtype=np.float32)
    x8 = (x * 255).astype(np.uint8)
    z = rng.standard_normal((7, 4)).astype(np.float32)
    np.savez(tmp_path / "inputs.npz", x=x, x8=x8, z=z)
    (tmp_path / "wire.json").write_text(json.dumps(_wire()))
    proc = subprocess.run([str(TRITON_PYTHON), str(Path(__file__).with_name("triton_checks.py")),
                           f"127.0.0.1:{port}", name, str(tmp_path)],
                          capture_output=True, text=True, timeout=300, env=ENV)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip().endswith("ok")
    out = np.load(tmp_path / "outputs.npz")
    enc = v1.Encode(vae_pb2.EncodeRequest(images=tensor(x)), timeout=10)
    enc8 = v1.Encode(vae_pb2.EncodeRequest(images=tensor(x8)), timeout=10)
    dec = v1.Decode(vae_pb2.DecodeRequest(z=tensor(z)), timeout=10)
    for client in ("sync", "aio"):
        np.testing.assert_array_equal(out[f"{client}_mu"], array(enc.mu))
        np.testing.assert_array_equal(out[f"{client}_logvar"], array(enc.logvar))
        np.testing.assert_array_equal(out[f"{client}_x_mean"], array(dec.images))
    np.testing.assert_array_equal(out["sync_mu8"], array(enc8.mu))
