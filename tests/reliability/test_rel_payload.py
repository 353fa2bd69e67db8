"""Payload attacks on a real `vae serve` process: messages over the receive limit are answered
RESOURCE_EXHAUSTED without the server holding them (resident memory stays bounded), and many slow
clients (half-open connections, streams never read) do not starve a well-behaved one."""

from __future__ import annotations

import socket
import threading
from pathlib import Path

import grpc
import numpy as np
from e2e_helpers import tensor
from rel_helpers import ServeProcess, rss_bytes, serving

from protos.vae.v1 import vae_pb2, vae_pb2_grpc

MIB = 1024 * 1024
LIMIT = 1 * MIB


def _oversize(target: str, count: int, codes: list[grpc.StatusCode]) -> None:
    x = tensor(np.zeros((32768, 1, 8, 8), np.float32))  # 8 MiB, 8x the limit
    opts = [("grpc.max_send_message_length", 64 * MIB)]
    with grpc.insecure_channel(target, options=opts) as ch:
        stub = vae_pb2_grpc.VaeServiceStub(ch)
        for _ in range(count):
            try:
                stub.Encode(vae_pb2.EncodeRequest(images=x), timeout=60)
                codes.append(grpc.StatusCode.OK)
            except grpc.RpcError as exc:
                codes.append(exc.code())


def _normal_calls(target: str, count: int) -> int:
    ok = 0
    with grpc.insecure_channel(target) as ch:
        stub = vae_pb2_grpc.VaeServiceStub(ch)
        for i in range(count):
            stub.Sample(vae_pb2.SampleRequest(n=4, seed=i), timeout=20)
            stub.Encode(
                vae_pb2.EncodeRequest(images=tensor(np.full((2, 1, 8, 8), 0.5, np.float32))), timeout=20
            )
            ok += 1
    return ok


def test_oversize_messages_resource_exhausted_memory_bounded(tiny_model_dir: Path, tmp_path: Path) -> None:
    with ServeProcess(
        tiny_model_dir, tmp_path / "serve.log", "--max-receive-message-bytes", str(LIMIT)
    ) as srv:
        assert _normal_calls(srv.target, 20) == 20  # warm
        before = rss_bytes(srv.pid)
        codes: list[grpc.StatusCode] = []
        threads = [threading.Thread(target=_oversize, args=(srv.target, 4, codes)) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=300)
        after = rss_bytes(srv.pid)
        assert codes == [grpc.StatusCode.RESOURCE_EXHAUSTED] * 32
        sent = 32 * 8 * MIB
        growth = after - before
        print(
            f"\noversize: 32 x 8 MiB messages (limit 1 MiB) -> 32 RESOURCE_EXHAUSTED; server RSS "
            f"{before / MIB:.1f} -> {after / MIB:.1f} MiB (+{growth / MIB:.1f} MiB for "
            f"{sent / MIB:.0f} MiB sent)"
        )
        assert growth < 64 * MIB
        assert serving(srv.target) and _normal_calls(srv.target, 5) == 5


def test_slow_clients_do_not_starve_others(tiny_model_dir: Path, tmp_path: Path) -> None:
    with ServeProcess(tiny_model_dir, tmp_path / "serve.log") as srv:
        _normal_calls(srv.target, 5)
        before = rss_bytes(srv.pid)
        # 200 half-open connections: half an HTTP/2 preface, then silence (slowloris).
        socks = []
        for _ in range(200):
            s = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
            s.sendall(b"PRI * HTTP/2.0\r\n")
            socks.append(s)
        # 16 streams of 100,000 samples each that the client never reads: flow control must stop the
        # server, which keeps at most two chunks per stream in hand.
        channels = [grpc.insecure_channel(srv.target) for _ in range(4)]
        streams = [
            vae_pb2_grpc.VaeServiceStub(channels[i % 4]).SampleStream(
                vae_pb2.SampleRequest(n=100_000, seed=i, chunk_size=256), timeout=120
            )
            for i in range(16)
        ]
        for s in streams:  # each stream really started (first message arrived)
            assert next(s).images.shape[0] == 256
        try:
            ok = _normal_calls(srv.target, 50)  # each call bounded by its deadline: no starvation
            during = rss_bytes(srv.pid)
        finally:
            for s in streams:
                s.cancel()
            for ch in channels:
                ch.close()
            for s in socks:
                s.close()
        assert ok == 50
        print(
            f"\nslow clients: 200 stalled connections + 16 unread streams; 100/100 normal calls OK; "
            f"server RSS {before / MIB:.1f} -> {during / MIB:.1f} MiB"
        )
        assert during - before < 128 * MIB
        assert serving(srv.target) and _normal_calls(srv.target, 5) == 5


OVERSIZED = 30


def test_oversized_requests_leave_rss_flat(tiny_model_dir: Path, tmp_path: Path) -> None:
    """Default settings: the receive limit is derived from the model (the largest valid request plus
    headroom, not 64 MiB), so Decodes of 32 MiB, each beyond any valid request, are refused by grpc
    before the server holds them, and resident memory stays where it was."""
    with ServeProcess(tiny_model_dir, tmp_path / "serve.log") as srv:
        assert _normal_calls(srv.target, 20) == 20  # warm
        before = rss_bytes(srv.pid)
        z = tensor(np.zeros((2 * MIB, 4), np.float32))  # 32 MiB of latents: under the old 64 MiB default
        request = vae_pb2.DecodeRequest(z=z)
        codes = []
        with grpc.insecure_channel(srv.target, options=[("grpc.max_send_message_length", 64 * MIB)]) as ch:
            stub = vae_pb2_grpc.VaeServiceStub(ch)
            for _ in range(OVERSIZED):
                try:
                    stub.Decode(request, timeout=60)
                    codes.append(grpc.StatusCode.OK)
                except grpc.RpcError as exc:
                    codes.append(exc.code())
        after = rss_bytes(srv.pid)
        assert codes == [grpc.StatusCode.RESOURCE_EXHAUSTED] * OVERSIZED
        print(f"\noversized with the derived limit: {OVERSIZED} Decodes of 32 MiB -> {OVERSIZED} "
              f"RESOURCE_EXHAUSTED; server RSS {before / MIB:.1f} -> {after / MIB:.1f} MiB "
              f"({(after - before) / before:+.1%})")
        assert abs(after - before) <= 0.2 * before
        assert serving(srv.target) and _normal_calls(srv.target, 5) == 5
