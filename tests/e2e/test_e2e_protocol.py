"""Protocol hygiene over real gRPC: each validation error, each limit, health transitions, reflection."""

from __future__ import annotations

import json
import math
import time

import grpc
import numpy as np
import pytest
from e2e_helpers import ServerThread, settings_for, stub_for, tensor
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from protos.vae.v1 import vae_pb2


@pytest.fixture(scope="module")
def dims(model_dir) -> tuple[tuple[int, int, int], int]:
    m = json.loads((model_dir / "manifest.json").read_text())
    return tuple(m["input_shape"]), m["latent_dim"]


def _fails(call, request, code: grpc.StatusCode, *needles: str) -> str:
    with pytest.raises(grpc.RpcError) as err:
        result = call(request)
        if not isinstance(result, vae_pb2.SampleResponse | vae_pb2.DecodeResponse | vae_pb2.EncodeResponse):
            list(result)  # streaming: the error comes with the first message
    assert err.value.code() == code, err.value.details()
    for needle in needles:
        assert needle in err.value.details(), err.value.details()
    return err.value.details()


def test_image_validation_errors(stub, dims):
    (c, h, w), _ = dims
    ok = np.full((2, c, h, w), 0.5, np.float32)
    enc = stub.Encode
    inv = grpc.StatusCode.INVALID_ARGUMENT
    _fails(
        enc,
        vae_pb2.EncodeRequest(images=tensor(ok[:, :, :, :-1])),
        inv,
        "does not match",
        f"[N, {c}, {h}, {w}]",
    )
    _fails(enc, vae_pb2.EncodeRequest(images=tensor(ok.reshape(2, -1))), inv, "rank 2")
    bad_dtype = vae_pb2.Tensor(shape=[2, c, h, w], dtype=vae_pb2.DATA_TYPE_UNSPECIFIED, data=ok.tobytes())
    _fails(enc, vae_pb2.EncodeRequest(images=bad_dtype), inv, "dtype DATA_TYPE_UNSPECIFIED")
    short = vae_pb2.Tensor(shape=[2, c, h, w], dtype=vae_pb2.DATA_TYPE_FLOAT32, data=ok.tobytes()[:-4])
    _fails(enc, vae_pb2.EncodeRequest(images=short), inv, "data bytes", f"needs {ok.nbytes}")
    nan = ok.copy()
    nan[1, 0, 0, 0] = np.nan
    nan[0, 0, 0, 0] = np.inf
    _fails(enc, vae_pb2.EncodeRequest(images=tensor(nan)), inv, "2 NaN/Inf")
    _fails(enc, vae_pb2.EncodeRequest(images=tensor(ok * 3)), inv, "[0, 1]", "uint8")
    _fails(enc, vae_pb2.EncodeRequest(images=tensor(ok[:0])), inv, "at least one")
    _fails(stub.Reconstruct, vae_pb2.ReconstructRequest(images=tensor(-ok)), inv, "[0, 1]")
    _fails(enc, vae_pb2.EncodeRequest(), inv, "images: missing")
    no_shape = vae_pb2.Tensor(dtype=vae_pb2.DATA_TYPE_FLOAT32, data=ok.tobytes())
    _fails(enc, vae_pb2.EncodeRequest(images=no_shape), inv, "shape is empty")


def test_latent_validation_errors(stub, dims):
    _, d = dims
    inv = grpc.StatusCode.INVALID_ARGUMENT
    _fails(
        stub.Decode,
        vae_pb2.DecodeRequest(z=tensor(np.zeros((3, d + 1), np.float32))),
        inv,
        f"latent dimension {d + 1}",
        f"model's is {d}",
    )
    _fails(stub.Decode, vae_pb2.DecodeRequest(z=tensor(np.zeros((3,), np.float32))), inv, "rank 1")
    _fails(stub.Decode, vae_pb2.DecodeRequest(z=tensor(np.zeros((3, d), np.uint8))), inv, "UINT8")
    z = np.zeros((3, d), np.float32)
    z[2, 0] = np.nan
    _fails(stub.Decode, vae_pb2.DecodeRequest(z=tensor(z)), inv, "1 NaN/Inf")


def test_sample_validation_errors(stub):
    inv = grpc.StatusCode.INVALID_ARGUMENT
    for call in (stub.Sample, stub.SampleStream):
        _fails(call, vae_pb2.SampleRequest(n=0), inv, "n must be >= 1")
        for t in (0.0, -1.0, math.inf, math.nan):
            _fails(call, vae_pb2.SampleRequest(n=2, temperature=t), inv, "temperature must be finite and > 0")


def test_limits(stub, dims):
    (c, h, w), d = dims
    inv = grpc.StatusCode.INVALID_ARGUMENT
    _fails(stub.Sample, vae_pb2.SampleRequest(n=65), inv, "max_sample_n=64", "SampleStream")
    _fails(stub.SampleStream, vae_pb2.SampleRequest(n=5001), inv, "max_stream_n=5000")
    _fails(stub.SampleStream, vae_pb2.SampleRequest(n=100, chunk_size=65), inv, "chunk_size=65")
    _fails(
        stub.Decode,
        vae_pb2.DecodeRequest(z=tensor(np.zeros((65, d), np.float32))),
        inv,
        "max_batch_per_request=64",
    )
    _fails(
        stub.Encode,
        vae_pb2.EncodeRequest(images=tensor(np.zeros((65, c, h, w), np.uint8))),
        inv,
        "max_batch_per_request=64",
    )


def test_message_size_limit(model_dir, dims):
    _, d = dims
    with ServerThread(settings_for(model_dir, max_receive_message_bytes=4096)) as srv, srv.channel() as ch:
        with pytest.raises(grpc.RpcError) as err:
            stub_for(ch).Decode(vae_pb2.DecodeRequest(z=tensor(np.zeros((1024 // d + 64, d), np.float32))))
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_reply_size_limit_is_named(model_dir, dims):
    (c, h, w), d = dims
    per_image = c * h * w * 4
    limit = per_image * 10 + 100
    with ServerThread(settings_for(model_dir, max_send_message_bytes=limit)) as srv, srv.channel() as ch:
        stub = stub_for(ch)
        inv = grpc.StatusCode.INVALID_ARGUMENT
        _fails(
            stub.Sample, vae_pb2.SampleRequest(n=11), inv, f"max_send_message_bytes={limit}", "SampleStream"
        )
        _fails(
            stub.Decode, vae_pb2.DecodeRequest(z=tensor(np.zeros((11, d), np.float32))), inv, "over max_send"
        )
        assert (
            stub.Sample(vae_pb2.SampleRequest(n=11, format=vae_pb2.IMAGE_FORMAT_UINT8)).images.shape[0] == 11
        )
        _fails(stub.SampleStream, vae_pb2.SampleRequest(n=50, chunk_size=11), inv, "SampleStream chunk")
        assert len(list(stub.SampleStream(vae_pb2.SampleRequest(n=50, chunk_size=10)))) == 5


def _health(ch: grpc.Channel, service: str) -> int:
    return health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=service)).status


def test_health_transitions(model_dir):
    not_serving, serving = health_pb2.HealthCheckResponse.NOT_SERVING, health_pb2.HealthCheckResponse.SERVING
    with ServerThread(settings_for(model_dir), warm=False) as srv, srv.channel() as ch:
        # Started but not warm: not ready, and VaeService refuses work with UNAVAILABLE.
        assert _health(ch, "") == not_serving and _health(ch, "vae.v1.VaeService") == not_serving
        _fails(stub_for(ch).Sample, vae_pb2.SampleRequest(n=1), grpc.StatusCode.UNAVAILABLE, "not ready")
        srv.call(srv.server.warm_up())
        assert _health(ch, "") == serving and _health(ch, "vae.v1.VaeService") == serving
        watch = health_pb2_grpc.HealthStub(ch).Watch(
            health_pb2.HealthCheckRequest(service="vae.v1.VaeService")
        )
        assert next(watch).status == serving
        # Draining: the watcher sees NOT_SERVING before the server goes away.
        srv.call(srv.server.health.enter_graceful_shutdown())
        assert next(watch).status == not_serving
        assert _health(ch, "") == not_serving
        watch.cancel()


def test_reflection_lists_the_service(channel):
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    replies = list(
        stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
    )
    names = {s.name for s in replies[0].list_services_response.service}
    assert {"vae.v1.VaeService", "grpc.health.v1.Health"} <= names
    files = list(
        stub.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(file_containing_symbol="vae.v1.VaeService")])
        )
    )
    assert files[0].file_descriptor_response.file_descriptor_proto


def test_queue_full_is_resource_exhausted(model_dir):
    """max_queue=1 with requests piling up on one graph: the overflow gets RESOURCE_EXHAUSTED."""
    import threading

    # inline_max_rows=0: the held run must be on an inference thread, not on the event loop.
    with ServerThread(settings_for(model_dir, max_queue=1, inference_workers=1, inline_max_rows=0)) as srv, \
            srv.channel() as ch:
        stub = stub_for(ch)
        decoder = srv.server.decoder
        gate = threading.Event()
        real = decoder._run
        decoder._run = lambda x: (gate.wait(10), real(x))[1]  # hold the graph busy: a stalled GPU
        calls = [stub.Sample.future(vae_pb2.SampleRequest(n=1, seed=i)) for i in range(3)]
        # The server may receive the three calls in any order: one runs (held at the gate), one
        # waits in the one-slot queue, one overflows. Which is which is not ours to assume.
        deadline = time.monotonic() + 10
        while sum(f.done() for f in calls) < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        gate.set()
        codes = []
        for fut in calls:
            try:
                codes.append("ok" if fut.result(timeout=10).images.shape[0] == 1 else "bad")
            except grpc.RpcError as exc:
                codes.append(exc.code())
        assert sorted(map(str, codes)) == sorted(map(str, ["ok", "ok", grpc.StatusCode.RESOURCE_EXHAUSTED]))
