"""Memory returns after an unload: a `vae serve` process loads a model large enough to show in its RSS
(two 2048-wide hidden layers, tens of MiB of weights), unloads it, and its RSS comes back within 10 %
of what it was before the load."""

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


def test_rss_returns_after_unload(tiny_model_dir: Path, big_model_dir: Path, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(tiny_model_dir, repo / "vae" / "1")
    with serve_repository(repo, tmp_path) as (proc, port):

        async def go() -> tuple[int, int, int]:
            await wait_ready(port)
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
                stub = vae_pb2_grpc.VaeServiceStub(ch)
                await stub.Sample(vae_pb2.SampleRequest(n=8), timeout=30)
                before = rss_bytes(proc.pid)
                shutil.copytree(big_model_dir, repo / "big" / "1")
                await stub.LoadModel(vae_pb2.LoadModelRequest(model="big"), timeout=120)
                await stub.Sample(vae_pb2.SampleRequest(n=8, model="big"), timeout=30)
                loaded = rss_bytes(proc.pid)
                await stub.UnloadModel(vae_pb2.UnloadModelRequest(model="big"), timeout=60)
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline:  # drained and released in the background
                    listing = await stub.ListModels(vae_pb2.ListModelsRequest(), timeout=10)
                    if not any(v.model == "big" for v in listing.versions):
                        break
                    await asyncio.sleep(0.05)
                await asyncio.sleep(0.5)
                after = rss_bytes(proc.pid)
            return before, loaded, after

        before, loaded, after = asyncio.run(go())
    print(f"RSS: {before / MIB:.1f} MiB before, {loaded / MIB:.1f} MiB with the big model, "
          f"{after / MIB:.1f} MiB after its unload")
    assert loaded - before > 20 * MIB, "the big model does not show in RSS: the check would prove nothing"
    assert after <= 1.10 * before, (before / MIB, loaded / MIB, after / MIB)
