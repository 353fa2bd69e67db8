"""bench/breakdown.py sorts py-spy samples into stages by the innermost frame it recognises."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from breakdown import GRPC, POLLER, classify  # type: ignore[import-not-found]  # noqa: E402

LOOP = ["thread (1): MainThread", "BaseEventLoop._run_once (asyncio/base_events.py:1922)",
        "Handle._run (asyncio/events.py:80)"]


def test_innermost_known_frame_decides_the_stage() -> None:
    handler = [*LOOP, "CallGuard.unary (service/calls.py:130)",
               "VaeServicer.Decode (service/servicer.py:117)"]
    assert classify([*handler, "to_array (service/codec.py:20)", "decode_tensor (contracts/tensors.py:91)"]) \
        == "codec (tensor <-> numpy)"
    assert classify([*handler, "Validator.latents (service/validation.py:80)"]) == "validation"
    assert classify([*handler, "Batcher.submit (service/batching.py:104)"]).startswith("batcher")
    assert classify([*handler, "ServiceMetrics.latents (service/metrics.py:310)"]) == "metrics"
    assert classify(handler) == "handler body (reply building, sampling)"
    assert classify(handler[:4]) == "admission, routing, request wrapper"
    worker = ["thread (2): vae-decoder_0", "_worker (concurrent/futures/thread.py:83)",
              "Batcher._start.<locals>.work (service/batching.py:213)", "Graph.run (service/runtime.py:100)",
              "Session.run (onnxruntime/capi/onnxruntime_inference_collection.py:406)"]
    assert classify(worker) == "inference (onnxruntime)"


def test_grpc_cython_waits_and_the_poller() -> None:
    assert classify(LOOP) == GRPC  # no Python frame below the callback: grpc's Cython
    assert classify([*LOOP[:2], "EpollSelector.select (selectors.py:468)"]) is None
    assert classify(["thread (3): Thread-1 (_poll_wrapper)", "Thread.run (threading.py:982)"]) == POLLER
