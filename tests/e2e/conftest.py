"""e2e fixtures: real servers on port 0 serving the tiny model trained and exported for real."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from e2e_helpers import ServerThread, settings_for, stub_for

from protos.vae.v1 import vae_pb2_grpc

os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session")
def model_dir(tiny_model_dir: Path) -> Path:
    return tiny_model_dir


@pytest.fixture(scope="module")
def server(model_dir: Path) -> Iterator[ServerThread]:
    with ServerThread(
        settings_for(
            model_dir, max_sample_n=64, max_batch_per_request=64, max_stream_n=5000, default_chunk_size=16
        )
    ) as srv:
        yield srv


@pytest.fixture(scope="module")
def channel(server: ServerThread) -> Iterator[grpc.Channel]:
    with server.channel() as ch:
        yield ch


@pytest.fixture(scope="module")
def stub(channel: grpc.Channel) -> vae_pb2_grpc.VaeServiceStub:
    return stub_for(channel)
