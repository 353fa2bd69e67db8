"""The Open Inference Protocol (inference.GRPCInferenceService) on a real server, with the project's
own v2 stubs: answers equal vae.v1's for the same inputs, precise errors, the repository extension,
the shared admission and metrics. tritonclient itself runs in test_e2e_tritonclient.py."""

from __future__ import annotations

import time

import grpc
import numpy as np
import pytest
from e2e_helpers import ServerThread, array, settings_for, stub_for, tensor
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from prometheus_client import CollectorRegistry

from protos.inference import grpc_service_pb2 as pb
from protos.inference import grpc_service_pb2_grpc as pb_grpc
from protos.vae.v1 import vae_pb2


@pytest.fixture(scope="module")
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture(scope="module")
def srv(model_dir, registry):
    with ServerThread(settings_for(model_dir, max_batch_per_request=64), registry) as s:
        yield s


@pytest.fixture(scope="module")
def ch(srv):
    with srv.channel() as c:
        yield c


@pytest.fixture(scope="module")
def v2(ch) -> pb_grpc.GRPCInferenceServiceStub:
    return pb_grpc.GRPCInferenceServiceStub(ch)


@pytest.fixture(scope="module")
def name(ch) -> str:
    return stub_for(ch).GetModelInfo(vae_pb2.GetModelInfoRequest(), timeout=10).model_name


def _images(n: int = 5) -> np.ndarray:
    return np.random.default_rng(1).random((n, 1, 8, 8), dtype=np.float32)


def _raw_request(model: str, input_name: str, x: np.ndarray, datatype: str = "FP32",
                 **kw) -> pb.ModelInferRequest:
    req = pb.ModelInferRequest(model_name=model, **kw)
    req.inputs.add(name=input_name, datatype=datatype, shape=list(x.shape))
    req.raw_input_contents.append(np.ascontiguousarray(x).tobytes())
    return req


def _outputs(reply: pb.ModelInferResponse) -> dict[str, np.ndarray]:
    assert len(reply.outputs) == len(reply.raw_output_contents)
    return {o.name: np.frombuffer(raw, dtype="<f4").reshape(tuple(o.shape))
            for o, raw in zip(reply.outputs, reply.raw_output_contents, strict=True)}


def _code(call, request) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as err:
        call(request, timeout=10)
    return err.value.code(), err.value.details()


def test_reflection_lists_the_v2_service(ch):
    stub = reflection_pb2_grpc.ServerReflectionStub(ch)
    reply = next(stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")])))
    assert "inference.GRPCInferenceService" in {s.name for s in reply.list_services_response.service}


def test_server_and_model_metadata(v2, name):
    assert v2.ServerLive(pb.ServerLiveRequest(), timeout=10).live
    assert v2.ServerReady(pb.ServerReadyRequest(), timeout=10).ready
    meta = v2.ServerMetadata(pb.ServerMetadataRequest(), timeout=10)
    assert meta.name == "vae" and "model_repository" in meta.extensions
    enc = v2.ModelMetadata(pb.ModelMetadataRequest(name=f"{name}-encoder"), timeout=10)
    assert enc.platform == "onnxruntime_onnx" and list(enc.versions) == ["1"]
    assert [(t.name, t.datatype, list(t.shape)) for t in enc.inputs] == [("x", "FP32", [-1, 1, 8, 8])]
    assert [(t.name, list(t.shape)) for t in enc.outputs] == [("mu", [-1, 4]), ("logvar", [-1, 4])]
    dec = v2.ModelMetadata(pb.ModelMetadataRequest(name=f"{name}-decoder", version="1"), timeout=10)
    assert [(t.name, list(t.shape)) for t in dec.inputs] == [("z", [-1, 4])]
    assert [list(t.shape) for t in dec.outputs] == [[-1, 1, 8, 8]]
    config = v2.ModelConfig(pb.ModelConfigRequest(name=f"{name}-decoder"), timeout=10).config
    assert config.max_batch_size == 64 and config.platform == "onnxruntime_onnx"
    assert [list(i.dims) for i in config.input] == [[4]] and config.dynamic_batching.preferred_batch_size


def test_encoder_and_decoder_equal_vae_v1(v2, ch, name):
    v1 = stub_for(ch)
    x = _images()
    enc = v1.Encode(vae_pb2.EncodeRequest(images=tensor(x)), timeout=10)
    reply = v2.ModelInfer(_raw_request(f"{name}-encoder", "x", x, id="req-7"), timeout=10)
    assert (reply.model_name, reply.model_version, reply.id) == (f"{name}-encoder", "1", "req-7")
    out = _outputs(reply)
    np.testing.assert_array_equal(out["mu"], array(enc.mu))
    np.testing.assert_array_equal(out["logvar"], array(enc.logvar))
    # Typed contents give the same answer as raw bytes; UINT8 pixels are scaled as vae.v1 does.
    typed = pb.ModelInferRequest(model_name=f"{name}-encoder")
    typed.inputs.add(name="x", datatype="FP32", shape=list(x.shape)).contents.fp32_contents.extend(x.ravel())
    np.testing.assert_array_equal(_outputs(v2.ModelInfer(typed, timeout=10))["mu"], out["mu"])
    u8 = (x * 255).astype(np.uint8)
    enc8 = v1.Encode(vae_pb2.EncodeRequest(images=tensor(u8)), timeout=10)
    typed8 = pb.ModelInferRequest(model_name=f"{name}-encoder")
    typed8.inputs.add(name="x", datatype="UINT8", shape=list(u8.shape)).contents.uint_contents.extend(
        u8.ravel().tolist())
    np.testing.assert_array_equal(_outputs(v2.ModelInfer(typed8, timeout=10))["mu"], array(enc8.mu))
    z = out["mu"]
    dec = v1.Decode(vae_pb2.DecodeRequest(z=tensor(z)), timeout=10)
    req = _raw_request(f"{name}-decoder", "z", z, model_version="1")
    req.outputs.add(name="x_mean")
    np.testing.assert_array_equal(_outputs(v2.ModelInfer(req, timeout=10))["x_mean"], array(dec.images))
    # Asking for one output sends only it.
    only = _raw_request(f"{name}-encoder", "x", x)
    only.outputs.add(name="logvar")
    assert list(_outputs(v2.ModelInfer(only, timeout=10))) == ["logvar"]


def test_unknown_model_or_version_is_not_found_with_the_list(v2, name):
    code, msg = _code(v2.ModelInfer, _raw_request("nope-encoder", "x", _images()))
    assert code == grpc.StatusCode.NOT_FOUND
    assert f"{name}-decoder, {name}-encoder" in msg
    code, msg = _code(v2.ModelInfer, _raw_request(f"{name}-encoder", "x", _images(), model_version="9"))
    assert code == grpc.StatusCode.NOT_FOUND and "versions: 1" in msg
    code, _ = _code(v2.ModelMetadata, pb.ModelMetadataRequest(name=name))
    assert code == grpc.StatusCode.NOT_FOUND
    assert not v2.ModelReady(pb.ModelReadyRequest(name="nope-decoder"), timeout=10).ready
    assert not v2.ModelReady(pb.ModelReadyRequest(name=f"{name}-decoder", version="2"), timeout=10).ready
    assert v2.ModelReady(pb.ModelReadyRequest(name=f"{name}-decoder"), timeout=10).ready


@pytest.mark.parametrize("mutate, expected", [
    (lambda r: r.inputs[0].__setattr__("datatype", "INT64"), "datatype 'INT64' is not accepted"),
    (lambda r: r.inputs[0].__setattr__("name", "images"), "takes one input 'x'"),
    (lambda r: r.raw_input_contents.__setitem__(0, b"\0" * 12), "holds 12 bytes"),
    (lambda r: r.raw_input_contents.append(b""), "2 entries for 1 inputs"),
    (lambda r: (r.inputs[0].shape.__setitem__(1, 3),
                r.raw_input_contents.__setitem__(0, np.zeros((5, 3, 8, 8), "<f4").tobytes())),
     "does not match the model's"),
    (lambda r: r.inputs[0].shape.__setitem__(0, -1), "negative axis"),
    (lambda r: (r.inputs[0].ClearField("shape"), r.inputs[0].shape.extend([0, 588, 4938, 128476, 6181293]),
                r.raw_input_contents.__setitem__(0, b"")), "too large to address"),
    (lambda r: (r.inputs[0].ClearField("shape"), r.inputs[0].shape.extend([2**31] * 4)),
     "too large to address"),
    (lambda r: r.inputs[0].shape.extend([1] * 9), "rank 13 is over 8"),
    (lambda r: r.outputs.add(name="x_mean"), "has no output 'x_mean'"),
    (lambda r: r.raw_input_contents.__setitem__(0, np.full(5 * 64, 2.0, "<f4").tobytes()), "[0, 1]"),
    (lambda r: r.raw_input_contents.__setitem__(0, np.full(5 * 64, np.nan, "<f4").tobytes()), "NaN"),
])
def test_bad_inputs_are_invalid_argument(v2, name, mutate, expected):
    req = _raw_request(f"{name}-encoder", "x", _images())
    mutate(req)
    code, msg = _code(v2.ModelInfer, req)
    assert code == grpc.StatusCode.INVALID_ARGUMENT, msg
    assert expected in msg


def test_typed_contents_errors(v2, name):
    fp16 = pb.ModelInferRequest(model_name=f"{name}-decoder")
    fp16.inputs.add(name="z", datatype="FP16", shape=[1, 4]).contents.fp32_contents.extend([0.0] * 4)
    code, msg = _code(v2.ModelInfer, fp16)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "raw_input_contents" in msg
    short = pb.ModelInferRequest(model_name=f"{name}-decoder")
    short.inputs.add(name="z", datatype="FP32", shape=[2, 4]).contents.fp32_contents.extend([0.0] * 4)
    assert "holds 4 values" in _code(v2.ModelInfer, short)[1]
    wrong = pb.ModelInferRequest(model_name=f"{name}-decoder")
    wrong.inputs.add(name="z", datatype="FP32", shape=[1, 4]).contents.int_contents.extend([0] * 4)
    assert "not int_contents" in _code(v2.ModelInfer, wrong)[1]
    huge = pb.ModelInferRequest(model_name=f"{name}-encoder")
    huge.inputs.add(name="x", datatype="UINT8", shape=[1, 1, 1, 1]).contents.uint_contents.append(300)
    assert "[0, 255]" in _code(v2.ModelInfer, huge)[1]
    # An fp16 latent in raw bytes is accepted and equals the float32 answer of the same values.
    z = np.zeros((2, 4), np.float16)
    a = v2.ModelInfer(_raw_request(f"{name}-decoder", "z", z, datatype="FP16"), timeout=10)
    b = v2.ModelInfer(_raw_request(f"{name}-decoder", "z", z.astype(np.float32)), timeout=10)
    np.testing.assert_array_equal(_outputs(a)["x_mean"], _outputs(b)["x_mean"])


def test_repository_index_load_unload(v2, name):
    index = v2.RepositoryIndex(pb.RepositoryIndexRequest(), timeout=10)
    assert [(m.name, m.version, m.state) for m in index.models] == [
        (f"{name}-encoder", "1", "READY"), (f"{name}-decoder", "1", "READY")]
    code, msg = _code(v2.RepositoryModelLoad, pb.RepositoryModelLoadRequest(model_name="nope-encoder"))
    assert code == grpc.StatusCode.NOT_FOUND and f"{name}-encoder" in msg
    code, _ = _code(v2.RepositoryModelUnload, pb.RepositoryModelUnloadRequest(model_name="nope"))
    assert code == grpc.StatusCode.NOT_FOUND
    code, _ = _code(v2.RepositoryIndex, pb.RepositoryIndexRequest(repository_name="other"))
    assert code == grpc.StatusCode.NOT_FOUND
    v2.RepositoryModelUnload(pb.RepositoryModelUnloadRequest(model_name=f"{name}-decoder"), timeout=10)
    try:
        assert not v2.ModelReady(pb.ModelReadyRequest(name=f"{name}-decoder"), timeout=10).ready
        ready = v2.RepositoryIndex(pb.RepositoryIndexRequest(ready=True), timeout=10)
        assert [m.name for m in ready.models] == [f"{name}-encoder"]
        code, msg = _code(v2.ModelInfer, _raw_request(f"{name}-decoder", "z", np.zeros((1, 4), "<f4")))
        assert code == grpc.StatusCode.UNAVAILABLE and "UNAVAILABLE (unloaded)" in msg
    finally:
        v2.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name=f"{name}-decoder"), timeout=10)
    assert v2.ModelReady(pb.ModelReadyRequest(name=f"{name}-decoder"), timeout=10).ready


def test_v2_shares_vae_v1_metrics_and_batchers(v2, name, registry, srv):
    def sample(metric, **labels):
        # Every series also carries model and version labels: sum the ones matching `labels`.
        return sum(s.value for fam in registry.collect() for s in fam.samples
                   if s.name == metric and all(s.labels.get(k) == v for k, v in labels.items()))

    def settled(metric, want, **labels):
        # grpc.aio's abort sends the status before the handler's `finally` counts the call.
        deadline = time.monotonic() + 5
        while sample(metric, **labels) < want and time.monotonic() < deadline:
            time.sleep(0.01)
        return sample(metric, **labels)

    ok = sample("vae_requests_total", method="ModelInfer", code="OK")
    bad = sample("vae_requests_total", method="ModelInfer", code="INVALID_ARGUMENT")
    rows = sample("vae_batch_size_sum", graph="encoder")
    v2.ModelInfer(_raw_request(f"{name}-encoder", "x", _images(3)), timeout=10)
    code, msg = _code(v2.ModelInfer, _raw_request(f"{name}-encoder", "x", _images(3), datatype="UINT8"))
    assert code == grpc.StatusCode.INVALID_ARGUMENT, msg
    assert sample("vae_requests_total", method="ModelInfer", code="OK") == ok + 1
    assert settled("vae_requests_total", bad + 1, method="ModelInfer", code="INVALID_ARGUMENT") == bad + 1
    assert sample("vae_batch_size_sum", graph="encoder") == rows + 3


def test_undecodable_body(ch):
    raw = ch.unary_unary("/inference.GRPCInferenceService/ModelInfer")
    with pytest.raises(grpc.RpcError) as err:
        raw(b"\xff\xff\xff", timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_not_ready_and_token(model_dir, tmp_path):
    token = tmp_path / "token"
    token.write_text("v2-token\n")
    with ServerThread(settings_for(model_dir, auth_token_file=str(token)), warm=False) as s, \
            s.channel() as c:
        v2 = pb_grpc.GRPCInferenceServiceStub(c)
        auth = [("authorization", "Bearer v2-token")]
        # Every v2 RPC, load and unload included, needs the token.
        service = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
        for method in service.methods:
            request = getattr(pb, method.input_type.name)()
            code, _ = _code(getattr(v2, method.name), request)
            assert code == grpc.StatusCode.UNAUTHENTICATED, method.name
        assert v2.ServerLive(pb.ServerLiveRequest(), timeout=10, metadata=auth).live
        assert not v2.ServerReady(pb.ServerReadyRequest(), timeout=10, metadata=auth).ready
        with pytest.raises(grpc.RpcError) as err:
            v2.ModelInfer(_raw_request("x-encoder", "x", _images()), timeout=10, metadata=auth)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
