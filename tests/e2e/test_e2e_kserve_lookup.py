"""The v2 servicer's ModelLookup seam with several models and versions at once: two real exported models
(the tiny MLP and the tiny conv VAE, same shapes, different weights) served by two real servers on one
event loop, and the first server's v2 service given a lookup over both. Routing by name and version,
the latest version when none is named, NOT_FOUND listing what is served."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import grpc
import numpy as np
import pytest
from e2e_helpers import ServerThread, array, settings_for, stub_for, tensor

from protos.inference import grpc_service_pb2 as pb
from protos.inference import grpc_service_pb2_grpc as pb_grpc
from protos.vae.v1 import vae_pb2
from service.errors import NotFound
from service.kserve_models import GRAPHS, IndexEntry, ServedModel
from service.server import create_server


class Repository:
    """A ModelLookup over fixed model versions, as a model registry would present them."""

    def __init__(self, models: Sequence[ServedModel]) -> None:
        self.models = list(models)

    def serving(self) -> Sequence[ServedModel]:
        return self.models

    def index(self) -> Sequence[IndexEntry]:
        return [IndexEntry(f"{m.name}-{g}", m.version, "READY") for m in self.models for g in GRAPHS]

    async def load(self, v2_name: str) -> None:
        if v2_name not in {e.name for e in self.index()}:
            raise NotFound(f"model {v2_name!r} is not in the repository")

    async def unload(self, v2_name: str) -> None:
        await self.load(v2_name)


@pytest.fixture(scope="module")
def two(model_dir, tiny_conv_model_dir):
    with ServerThread(settings_for(model_dir)) as srv:
        async def second():
            other, _ = create_server(settings_for(tiny_conv_model_dir))
            await other.start()
            return other
        other = srv.call(second())
        try:
            first = srv.server
            assert first is not None
            mlp, conv = first.lookup.serving()[0], other.lookup.serving()[0]
            first.inference.lookup = Repository([
                dataclasses.replace(mlp, version="1"), dataclasses.replace(conv, version="2"),
                dataclasses.replace(conv, name="other", version="7")])
            with srv.channel() as ch, grpc.insecure_channel(f"127.0.0.1:{other.port}") as och:
                yield pb_grpc.GRPCInferenceServiceStub(ch), stub_for(ch), stub_for(och), mlp.name
        finally:
            srv.call(other.stop(0.5))


def _infer(v2, model: str, x: np.ndarray, version: str = "") -> tuple[str, np.ndarray]:
    req = pb.ModelInferRequest(model_name=model, model_version=version)
    req.inputs.add(name="x", datatype="FP32", shape=list(x.shape))
    req.raw_input_contents.append(x.tobytes())
    reply = v2.ModelInfer(req, timeout=10)
    mu = reply.outputs[0]
    return reply.model_version, np.frombuffer(reply.raw_output_contents[0], "<f4").reshape(tuple(mu.shape))


def test_routed_by_name_and_version(two):
    v2, v1_mlp, v1_conv, name = two
    x = np.random.default_rng(5).random((3, 1, 8, 8), dtype=np.float32)
    mu_mlp = array(v1_mlp.Encode(vae_pb2.EncodeRequest(images=tensor(x)), timeout=10).mu)
    mu_conv = array(v1_conv.Encode(vae_pb2.EncodeRequest(images=tensor(x)), timeout=10).mu)
    assert not np.array_equal(mu_mlp, mu_conv)  # two different models: routing is observable
    version, mu = _infer(v2, f"{name}-encoder", x, "1")
    assert version == "1"
    np.testing.assert_array_equal(mu, mu_mlp)
    version, mu = _infer(v2, f"{name}-encoder", x)  # no version: the latest
    assert version == "2"
    np.testing.assert_array_equal(mu, mu_conv)
    version, mu = _infer(v2, "other-encoder", x)
    assert version == "7"
    np.testing.assert_array_equal(mu, mu_conv)
    meta = v2.ModelMetadata(pb.ModelMetadataRequest(name=f"{name}-decoder"), timeout=10)
    assert list(meta.versions) == ["1", "2"]
    index = v2.RepositoryIndex(pb.RepositoryIndexRequest(), timeout=10)
    assert len(index.models) == 6


def test_unknown_version_or_name_lists_what_is_served(two):
    v2, _, _, name = two
    x = np.zeros((1, 1, 8, 8), np.float32)
    with pytest.raises(grpc.RpcError) as err:
        _infer(v2, f"{name}-encoder", x, "3")
    assert err.value.code() == grpc.StatusCode.NOT_FOUND and "versions: 1, 2" in err.value.details()
    with pytest.raises(grpc.RpcError) as err:
        _infer(v2, "missing-encoder", x)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert f"other-decoder, other-encoder, {name}-decoder, {name}-encoder" in err.value.details()
