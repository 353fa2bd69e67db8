"""Memory returns after an unload: a `vae serve` process loads a model large enough to show in its RSS
(two 2048-wide hidden layers, tens of MiB of weights) with LoadModel, unloads it with UnloadModel, and
its RSS comes back within 10 % of the baseline; repeated cycles do not grow it."""

from __future__ import annotations

import asyncio
import shutil
import time
from pathlib import Path

import grpc
import pytest
from reload_load import rss_bytes, serve_repository, wait_ready

from protos.vae.v1 import vae_pb2, vae_pb2_grpc

MIB = 2**20


@pytest.fixture(scope="module")
def big_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from exporter.export import export_model
    from trainer.config import ModelConfig, TrainConfig
    from trainer.train import train

    tmp = tmp_path_factory.mktemp("big")
    model_cfg = ModelConfig(input_shape=(1, 8, 8), latent_dim=4, arch="mlp", hidden=(2048, 2048),
                            likelihood="bernoulli")
    train_cfg = TrainConfig(data="digits", out_dir=str(tmp / "run"), epochs=1, batch_size=256, lr=1e-3,
                            seed=0, grids=False, tensorboard=False)
    out = tmp / "model"
    export_model(train(model_cfg, train_cfg), out)
    return out


async def _cycle(stub: vae_pb2_grpc.VaeServiceStub, pid: int) -> tuple[int, int]:
    """LoadModel big, use it, UnloadModel big, wait for its release; (RSS loaded, RSS after)."""
    await stub.LoadModel(vae_pb2.LoadModelRequest(model="big", version="1"), timeout=120)
    await stub.Sample(vae_pb2.SampleRequest(n=8, model="big"), timeout=30)
    loaded = rss_bytes(pid)
    await stub.UnloadModel(vae_pb2.UnloadModelRequest(model="big"), timeout=60)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # drained and released in the background
        listing = await stub.ListModels(vae_pb2.ListModelsRequest(), timeout=10)
        if not any(v.model == "big" for v in listing.versions):
            break
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.5)
    return loaded, rss_bytes(pid)


def test_rss_returns_after_unload(tiny_model_dir: Path, big_model_dir: Path, tmp_path: Path) -> None:
    """The first load of a graph pays onnxruntime's one-time set-up (kernel registries, allocators: about
    12 MiB in a plain onnxruntime probe, which keeps it after the session is gone too); so the baseline
    is the RSS after one load/unload cycle, and each further cycle must come back to it."""
    repo = tmp_path / "repo"
    shutil.copytree(tiny_model_dir, repo / "vae" / "1")
    shutil.copytree(big_model_dir, repo / "big" / "1")
    (repo / "big" / "config.json").write_text('{"version_policy": "specific:9"}')  # not served at start
    with serve_repository(repo, tmp_path) as (proc, port):

        async def go() -> list[int]:
            await wait_ready(port)
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
                stub = vae_pb2_grpc.VaeServiceStub(ch)
                await stub.Sample(vae_pb2.SampleRequest(n=8), timeout=30)
                start = rss_bytes(proc.pid)
                first = await _cycle(stub, proc.pid)
                second = await _cycle(stub, proc.pid)
                third = await _cycle(stub, proc.pid)
            return [start, *first, *second, *third]

        start, load1, base, load2, after2, load3, after3 = asyncio.run(go())
    shown = ", ".join(f"{x / MIB:.1f}" for x in (start, load1, base, load2, after2, load3, after3))
    print(f"RSS MiB (start, then loaded/after unload x3): {shown}")
    assert load2 - base > 20 * MIB, "the big model does not show in RSS: the check would prove nothing"
    for loaded, after in ((load2, after2), (load3, after3)):
        assert after <= 1.10 * base, (base / MIB, loaded / MIB, after / MIB)
