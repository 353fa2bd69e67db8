"""Noise streams, tensor codec and the validator, without a server."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protos.vae.v1 import vae_pb2
from service import codec, sampling
from service.errors import InvalidArgument, LimitExceeded
from service.validation import Limits, Validator


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**64 - 1),
    n=st.integers(1, 60),
    dim=st.integers(1, 9),
    cuts=st.lists(st.integers(1, 60), max_size=6),
    temperature=st.floats(0.01, 5.0),
)
def test_noise_does_not_depend_on_chunking(seed, n, dim, cuts, temperature):
    whole = sampling.prior_latents(sampling.noise_generator(seed), n, dim, temperature)
    gen = sampling.noise_generator(seed)
    parts, done = [], 0
    for k in [*cuts, n]:
        k = min(k, n - done)
        if k <= 0:
            break
        parts.append(sampling.prior_latents(gen, k, dim, temperature))
        done += k
    assert np.concatenate(parts).tobytes() == whole.tobytes()


def test_no_seed_means_fresh_noise():
    a = sampling.prior_latents(sampling.noise_generator(None), 4, 3, 1.0)
    b = sampling.prior_latents(sampling.noise_generator(None), 4, 3, 1.0)
    assert a.tobytes() != b.tobytes()


def test_codec_round_trip_and_uint8_images():
    for arr in (
        np.arange(6, dtype=np.float32).reshape(2, 3),
        np.ones((1, 2), np.float16),
        np.arange(4, dtype=np.uint8),
    ):
        t = codec.from_array(arr)
        assert codec.to_array(t, "x").tobytes() == arr.tobytes() and codec.to_array(t, "x").dtype == arr.dtype
    big_endian = np.arange(3, dtype=">f4")
    assert codec.to_array(codec.from_array(big_endian), "x").tolist() == [0.0, 1.0, 2.0]
    img = np.array([[0.0, 0.5, 1.0, 0.998]], np.float32)
    t = codec.images_message(img, vae_pb2.IMAGE_FORMAT_UINT8)
    assert t.dtype == vae_pb2.DATA_TYPE_UINT8 and list(t.data) == [0, 128, 255, 254]


def test_codec_rejects_bad_tensors():
    with pytest.raises(InvalidArgument, match="negative dimension"):
        codec.to_array(vae_pb2.Tensor(shape=[-1, 2], dtype=vae_pb2.DATA_TYPE_FLOAT32), "z")
    with pytest.raises(InvalidArgument, match="dtype 9 is not supported"):
        codec.to_array(vae_pb2.Tensor(shape=[1], dtype=9, data=b"1234"), "z")
    # An empty tensor whose other axes multiply past what numpy can address (found by the fuzz test).
    huge = [0, 588, 4938, 128476, 6181293]
    with pytest.raises(InvalidArgument, match=r"shape \[0, 588, .*too large to address"):
        codec.to_array(vae_pb2.Tensor(shape=huge, dtype=vae_pb2.DATA_TYPE_FLOAT32), "z")
    with pytest.raises(InvalidArgument, match="rank 70 is over the limit of 8 axes"):
        codec.to_array(vae_pb2.Tensor(shape=[0] * 70, dtype=vae_pb2.DATA_TYPE_FLOAT32), "z")


def test_validator_limits_and_messages():
    v = Validator(
        (3, 4, 4), 2, Limits(max_batch_per_request=5, max_sample_n=10, max_stream_n=100, default_chunk_size=4)
    )
    with pytest.raises(InvalidArgument, match=r"rank 3 .*expected rank 4 \[N, 3, 4, 4\]$"):
        v.images(np.zeros((1, 4, 4), np.float32))  # rank 3 is accepted only when C is 1
    with pytest.raises(LimitExceeded, match="max_batch_per_request=5"):
        v.latents(np.zeros((6, 2), np.float32))
    assert v.sample(3, None, 0, stream=False) == (1.0, 4)
    assert v.sample(30, 0.5, 7, stream=True) == (0.5, 7)
    with pytest.raises(LimitExceeded, match="use SampleStream"):
        v.sample(11, None, 0, stream=False)
    u8 = v.images(np.full((1, 3, 4, 4), 255, np.uint8))
    assert u8.dtype == np.float32 and float(u8.max()) == 1.0
