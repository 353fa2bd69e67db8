"""Serving the float16 graphs of a model exported with --fp16 (the wire stays float32)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from e2e_helpers import ServerThread, array, settings_for, stub_for, tensor

from protos.vae.v1 import vae_pb2


@pytest.fixture(scope="module")
def fp16_model_dir(tiny_run_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from exporter.export import export_model

    out = tmp_path_factory.mktemp("model-fp16") / "model"
    export_model(tiny_run_dir, out, fp16=True)
    return out


def test_fp16_graphs_serve_close_to_fp32(fp16_model_dir):
    rng = np.random.default_rng(0)
    with ServerThread(settings_for(fp16_model_dir)) as full, full.channel() as ch32:
        with ServerThread(settings_for(fp16_model_dir, fp16=True)) as half, half.channel() as ch16:
            s32, s16 = stub_for(ch32), stub_for(ch16)
            info = s16.GetModelInfo(vae_pb2.GetModelInfoRequest())
            assert info.graph_dtype == vae_pb2.DATA_TYPE_FLOAT16
            z = rng.standard_normal((5, info.latent_dim), dtype=np.float32)
            a = array(s32.Decode(vae_pb2.DecodeRequest(z=tensor(z))).images)
            b = array(s16.Decode(vae_pb2.DecodeRequest(z=tensor(z))).images)
            assert b.dtype == np.float32 and b.shape == a.shape
            np.testing.assert_allclose(b, a, atol=2e-2)
            x = rng.random((3, *info.input_shape), dtype=np.float32)
            mu32 = array(s32.Encode(vae_pb2.EncodeRequest(images=tensor(x))).mu)
            mu16 = array(s16.Encode(vae_pb2.EncodeRequest(images=tensor(x))).mu)
            np.testing.assert_allclose(mu16, mu32, atol=5e-2)
            req = vae_pb2.SampleRequest(n=4, seed=9)
            assert s16.Sample(req).images.data == s16.Sample(req).images.data
