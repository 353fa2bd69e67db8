"""`vae serve` as a real process: refusal to start on bad files, SIGTERM drain with requests in flight."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from protos.vae.v1 import vae_pb2, vae_pb2_grpc

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _serve(*args: str, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "vae_cli.main",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--metrics-port",
            "0",
            *args,
        ],
        env=env or ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _refused(*args: str, env: dict | None = None) -> str:
    proc = _serve(*args, env=env)
    try:
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 2, err
    assert "Traceback" not in err
    return err


@pytest.fixture()
def broken(model_dir: Path, tmp_path: Path):
    def copy() -> Path:
        dst = tmp_path / "model"
        shutil.copytree(model_dir, dst)
        return dst

    return copy


def test_refuses_missing_folder_and_manifest(tmp_path):
    assert "does not exist" in _refused("--model-dir", str(tmp_path / "nope"))
    assert "manifest.json: missing" in _refused("--model-dir", str(tmp_path))
    (tmp_path / "manifest.json").write_text("{not json")
    assert "not valid JSON" in _refused("--model-dir", str(tmp_path))
    env = {k: v for k, v in ENV.items() if k != "VAE_MODEL_DIR"}
    assert "--model-dir" in _refused(env=env)


def test_refuses_corrupt_truncated_missing_graphs(broken):
    d = broken()
    data = bytearray((d / "encoder.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (d / "encoder.onnx").write_bytes(bytes(data))
    assert "sha256" in (err := _refused("--model-dir", str(d))) and "encoder.onnx" in err
    (d / "decoder.onnx").write_bytes((d / "decoder.onnx").read_bytes()[:100])
    (d / "encoder.onnx").unlink()
    assert "encoder.onnx: graph file is missing" in _refused("--model-dir", str(d))


def test_refuses_truncated_graph(broken):
    d = broken()
    (d / "decoder.onnx").write_bytes((d / "decoder.onnx").read_bytes()[:100])
    assert "truncated" in _refused("--model-dir", str(d))


def test_refuses_shape_mismatch(broken):
    """Files intact (sha256 fine) but the manifest's shapes disagree with the graphs."""
    d = broken()
    manifest = json.loads((d / "manifest.json").read_text())
    # A self-consistent manifest (the shared schema rules refuse one whose own shapes disagree) that
    # records one latent dimension more than the graphs have.
    manifest["latent_dim"] += 1
    manifest["graphs"]["decoder"]["inputs"][0]["shape"][1] += 1
    if "decoder_params" in manifest["graphs"]:  # the Score graph takes latents too
        manifest["graphs"]["decoder_params"]["inputs"][0]["shape"][1] += 1
    for out in manifest["graphs"]["encoder"]["outputs"]:
        out["shape"][1] += 1
    for key in ("mu_mean", "mu_var", "posterior_var_mean", "kl_per_dim"):
        manifest["reference"][key].append(0.0)
    (d / "manifest.json").write_text(json.dumps(manifest))
    assert "does not match manifest.json" in _refused("--model-dir", str(d))
    manifest["graphs"]["encoder"]["outputs"][0]["shape"][1] -= 1
    (d / "manifest.json").write_text(json.dumps(manifest))
    assert "graph latent shapes do not match latent_dim" in _refused("--model-dir", str(d))


def test_refuses_bad_settings(model_dir):
    assert "--max-batch-size" in _refused("--model-dir", str(model_dir), "--max-batch-size", "0")
    assert "expected int" in _refused("--model-dir", str(model_dir), "--port", "http")
    env = {**ENV, "VAE_DYNAMIC_BATCHING": "maybe", "VAE_MODEL_DIR": str(model_dir)}
    assert "VAE_DYNAMIC_BATCHING" in _refused(env=env)
    assert "not one of" in _refused("--model-dir", str(model_dir), "--provider", "tpu")
    assert "needs both" in _refused("--model-dir", str(model_dir), "--tls-cert", "x.pem")


def _port(proc: subprocess.Popen, lines: list[str]) -> int:
    for line in proc.stderr:
        lines.append(line)
        if m := re.search(r"listening on [^ ]+:(\d+)", line):
            return int(m.group(1))
    raise AssertionError("server exited before listening:\n" + "".join(lines))


def test_sigterm_drains_in_flight_requests(model_dir):
    proc = _serve("--model-dir", str(model_dir), "--grace-seconds", "30", "--max-stream-n", "100000")
    lines: list[str] = []
    try:
        port = _port(proc, lines)
        threading.Thread(target=lambda: lines.extend(proc.stderr), daemon=True).start()
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            health = health_pb2_grpc.HealthStub(ch)
            for _ in range(600):
                status = health.Check(health_pb2.HealthCheckRequest(service="vae.v1.VaeService")).status
                if status == health_pb2.HealthCheckResponse.SERVING:
                    break
                time.sleep(0.05)
            stub = vae_pb2_grpc.VaeServiceStub(ch)
            n = 2000
            streams = [stub.SampleStream(vae_pb2.SampleRequest(n=n, seed=i, chunk_size=4)) for i in range(6)]
            firsts = [next(s) for s in streams]  # every stream is in flight on the server
            proc.send_signal(signal.SIGTERM)
            for first, stream in zip(firsts, streams, strict=True):
                assert first.images.shape[0] + sum(p.images.shape[0] for p in stream) == n
        assert proc.wait(timeout=60) == 0
        # Once draining, new connections are refused.
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch, pytest.raises(grpc.RpcError):
            vae_pb2_grpc.VaeServiceStub(ch).GetModelInfo(vae_pb2.GetModelInfoRequest(), timeout=2)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)
    log = "".join(lines)
    assert "draining" in log and "stopped" in log and "Traceback" not in log
