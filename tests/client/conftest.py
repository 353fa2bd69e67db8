"""Client fixtures: a real server (in a thread) serving the tiny model trained and exported for real."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from client_helpers import ServerThread

os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="module")
def server(tiny_model_dir: Path) -> Iterator[ServerThread]:
    with ServerThread(tiny_model_dir) as srv:
        yield srv


@pytest.fixture(scope="module")
def small_server(tiny_model_dir: Path) -> Iterator[ServerThread]:
    """Tight limits, so that the client must split requests and switch Sample to SampleStream."""
    with ServerThread(tiny_model_dir, max_batch_per_request=16, max_sample_n=8, default_chunk_size=8,
                      max_receive_message_bytes=64 * 1024 + 2048) as srv:
        yield srv
