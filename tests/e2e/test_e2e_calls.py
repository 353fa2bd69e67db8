"""The one handler wrapper on a real server: an unexpected exception is INTERNAL (never UNKNOWN) and
counted, undecodable bodies are counted, the receive limit is derived from the model, and the
Admission's ready / bound / drain rules."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from e2e_helpers import ServerThread, settings_for, stub_for, tensor
from prometheus_client import CollectorRegistry

from protos.vae.v1 import vae_pb2
from service.admission import Admission
from service.errors import Overloaded, Unavailable
from service.settings import receive_limit


@pytest.fixture(scope="module")
def served(model_dir: Path) -> Iterator[tuple[ServerThread, CollectorRegistry]]:
    registry = CollectorRegistry()
    with ServerThread(settings_for(model_dir), registry=registry) as srv:
        yield srv, registry


def _count(registry: CollectorRegistry, name: str, **labels: str) -> float:
    """The sum over every series of `name` whose labels include `labels` (model/version labels vary:
    a call refused before routing is counted on the unrouted series, a routed one on its version's)."""
    return sum(s.value for metric in registry.collect() for s in metric.samples
               if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))


def _settled(registry: CollectorRegistry, name: str, expected: float, **labels: str) -> float:
    """The counter once it reaches `expected` (at most 5 s): a stream's status can reach the client a
    moment before the handler's bookkeeping runs."""
    deadline = time.monotonic() + 5.0
    while _count(registry, name, **labels) < expected and time.monotonic() < deadline:
        time.sleep(0.01)
    return _count(registry, name, **labels)


class _Broken:
    """A graph runner that fails in a way no ServiceError describes (a programming error's stand-in:
    a real one cannot be produced on purpose, so this is the one fault injected here)."""

    async def submit(self, x: Any, deadline: float | None = None) -> Any:
        raise RuntimeError("secret internal detail")


def test_unexpected_exception_is_internal_and_counted(served: tuple[ServerThread, CollectorRegistry]) -> None:
    srv, registry = served
    assert srv.server is not None
    servicer = srv.server.models.resolve()  # the served version the calls are routed to
    methods = ("Encode", "SampleStream")
    before = {m: _count(registry, "vae_requests_total", method=m, code="INTERNAL") for m in methods}
    internal_before = _count(registry, "vae_errors_total", reason="internal")
    encoder, sampler = servicer.encoder, servicer.sampler
    servicer.encoder = servicer.sampler = _Broken()
    try:
        with srv.channel() as ch:
            stub = stub_for(ch)
            with pytest.raises(grpc.RpcError) as unary:
                x = tensor(np.zeros((2, 1, 8, 8), np.float32))
                stub.Encode(vae_pb2.EncodeRequest(images=x), timeout=10)
            with pytest.raises(grpc.RpcError) as stream:
                list(stub.SampleStream(vae_pb2.SampleRequest(n=5, chunk_size=2), timeout=10))
    finally:
        servicer.encoder, servicer.sampler = encoder, sampler
    for err in (unary.value, stream.value):
        assert err.code() == grpc.StatusCode.INTERNAL, (err.code(), err.details())
        assert "internal error while serving" in err.details()
        assert "secret" not in err.details() and "RuntimeError" not in err.details()
    for m in methods:
        want = before[m] + 1
        assert _settled(registry, "vae_requests_total", want, method=m, code="INTERNAL") == want
    want = internal_before + 2
    assert _settled(registry, "vae_errors_total", want, reason="internal") == want
    with srv.channel() as ch:  # the server goes on serving
        assert stub_for(ch).Sample(vae_pb2.SampleRequest(n=2), timeout=10).images.shape[0] == 2


def test_undecodable_bodies_are_counted(served: tuple[ServerThread, CollectorRegistry]) -> None:
    srv, registry = served
    garbage = b"\xff\xff\xff\xff\x0f"  # a truncated varint: no message parses from it
    methods = {"Decode": "unary_unary", "SampleStream": "unary_stream"}
    before = {m: _count(registry, "vae_requests_total", method=m, code="INVALID_ARGUMENT") for m in methods}
    undecodable_before = _count(registry, "vae_errors_total", reason="undecodable")
    with srv.channel() as ch:
        for method, kind in methods.items():
            call = getattr(ch, kind)(f"/vae.v1.VaeService/{method}")
            with pytest.raises(grpc.RpcError) as err:
                result = call(garbage, timeout=10)
                if kind == "unary_stream":
                    list(result)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "not a valid message" in err.value.details()
    for m in methods:
        want = before[m] + 1
        assert _settled(registry, "vae_requests_total", want, method=m, code="INVALID_ARGUMENT") == want
    want = undecodable_before + 2
    assert _settled(registry, "vae_errors_total", want, reason="undecodable") == want


def test_receive_limit_derived_from_the_model(served: tuple[ServerThread, CollectorRegistry]) -> None:
    srv, _ = served
    # 1,024 images of 28x28 float32 (3.2 MB) plus latents, with headroom: about 4.2 MB, not 64 MiB.
    assert 3_300_000 < receive_limit((1, 28, 28), 16, 1024) < 4_300_000
    with srv.channel(options=[("grpc.max_send_message_length", 64 * 2**20)]) as ch:
        stub = stub_for(ch)
        info = stub.GetModelInfo(vae_pb2.GetModelInfoRequest(), timeout=10)
        limit = info.limits.max_receive_message_bytes
        n = info.limits.max_batch_per_request
        assert limit == receive_limit(tuple(info.input_shape), info.latent_dim, n)
        # The largest valid request still fits ...
        biggest = vae_pb2.EncodeRequest(images=tensor(np.full((n, *info.input_shape), 0.5, np.float32)))
        assert biggest.ByteSize() < limit
        assert stub.Encode(biggest, timeout=30).mu.shape == [n, info.latent_dim]
        # ... and a body over the limit is refused by grpc before the server holds it.
        over = vae_pb2.DecodeRequest(z=tensor(np.zeros((limit // 16 + 1, info.latent_dim), np.float32)))
        with pytest.raises(grpc.RpcError) as err:
            stub.Decode(over, timeout=30)
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_admission_rules() -> None:
    async def go() -> None:
        a = Admission(max_in_flight=2, retry_after_ms=250)
        with pytest.raises(Unavailable):
            a.admit()  # not open yet (warming up)
        a.open()
        a.admit()
        a.admit()
        with pytest.raises(Overloaded) as over:
            a.admit()
        assert over.value.status == "RESOURCE_EXHAUSTED" and over.value.retry_after_ms == 250
        assert a.in_flight == 2 and a.peak_in_flight == 2
        loop = asyncio.get_running_loop()
        loop.call_later(0.05, a.release)
        loop.call_later(0.10, a.release)
        t0 = loop.time()
        assert await a.drain(5.0)  # returns when in-flight reaches 0, not at the timeout
        assert 0.09 < loop.time() - t0 < 1.0 and a.in_flight == 0
        with pytest.raises(Unavailable):
            a.admit()  # draining: refused at once
        b = Admission(max_in_flight=1)
        b.open()
        b.admit()
        assert not await b.drain(0.05)  # the work outlived the timeout
        a.park()
        parked = asyncio.ensure_future(a.parked())
        await asyncio.sleep(0.02)
        assert not parked.done()  # refusals wait while parked ...
        a.unpark()
        await asyncio.wait_for(parked, 1.0)  # ... and go on once unparked
        await a.parked()  # not parked: returns at once

    asyncio.run(go())
