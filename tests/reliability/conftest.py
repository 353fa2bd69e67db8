"""Reliability fixtures: one long-lived real server (in a thread) shared by the malformed-input and
fuzzing tests, plus the e2e helpers (ServerThread, tensor) reused rather than rewritten."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")
_E2E = str(Path(__file__).resolve().parents[1] / "e2e")
if _E2E not in sys.path:
    sys.path.insert(0, _E2E)

from e2e_helpers import ServerThread, settings_for  # noqa: E402

__all__: list[str] = []

# Small limits so that every limit can be crossed cheaply (the 8x8 model's image is 256 bytes).
LIMITS = {
    "max_batch_per_request": 64,
    "max_sample_n": 64,
    "max_stream_n": 2000,
    "default_chunk_size": 16,
    "max_receive_message_bytes": 256 * 1024,
    "max_send_message_bytes": 256 * 1024,
}


@pytest.fixture(scope="session")
def rel_server(tiny_model_dir: Path) -> Iterator[ServerThread]:
    """A real server on port 0 with small limits, shared by the whole reliability session."""
    with ServerThread(settings_for(tiny_model_dir, **LIMITS)) as srv:
        yield srv
