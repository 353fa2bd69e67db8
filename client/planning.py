"""Splitting large inputs into requests that fit the server's limits, shared by both clients.

The server reports its limits in GetModelInfo (`Limits`); the client's own channel limit also
applies. A request must fit min(client send, server receive), its reply min(server send, client
receive), and the item count must not exceed `max_batch_per_request`."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from protos.vae.v1 import vae_pb2

__all__ = ["Plan", "chunk_bounds", "image_format", "MARGIN_BYTES"]

# Room for the protobuf framing and the small fields around the tensors' raw bytes.
MARGIN_BYTES = 64 * 1024


def image_format(uint8: bool) -> vae_pb2.ImageFormat:
    return vae_pb2.IMAGE_FORMAT_UINT8 if uint8 else vae_pb2.IMAGE_FORMAT_FLOAT32


def chunk_bounds(n: int, size: int) -> list[tuple[int, int]]:
    """[start, stop) pairs covering range(n) in pieces of at most `size`."""
    size = max(1, size)
    return [(s, min(n, s + size)) for s in range(0, n, size)]


@dataclass(frozen=True)
class Plan:
    """What one server accepts, from its ModelInfo and the client's own message limit."""

    input_shape: tuple[int, ...]
    latent_dim: int
    max_request_bytes: int
    max_reply_bytes: int
    max_batch: int          # 0 = no limit reported
    max_sample_n: int       # 0 = no limit reported
    max_stream_n: int       # 0 = no limit reported

    @classmethod
    def from_info(cls, info: vae_pb2.ModelInfo, client_max_bytes: int) -> Plan:
        lim = info.limits
        recv = int(lim.max_receive_message_bytes) or client_max_bytes
        send = int(lim.max_send_message_bytes) or client_max_bytes
        return cls(input_shape=tuple(int(s) for s in info.input_shape), latent_dim=int(info.latent_dim),
                   max_request_bytes=min(client_max_bytes, recv), max_reply_bytes=min(client_max_bytes, send),
                   max_batch=int(lim.max_batch_per_request), max_sample_n=int(lim.max_sample_n),
                   max_stream_n=int(lim.max_stream_n))

    @property
    def image_elems(self) -> int:
        return int(np.prod(self.input_shape))

    def _fit(self, bytes_in: int, bytes_out: int, cap: int) -> int:
        n_in = max(1, (self.max_request_bytes - MARGIN_BYTES) // max(1, bytes_in))
        n_out = max(1, (self.max_reply_bytes - MARGIN_BYTES) // max(1, bytes_out))
        n = min(n_in, n_out)
        return min(n, cap) if cap > 0 else n

    def encode_chunk(self, itemsize: int, sample: bool) -> int:
        out = self.latent_dim * 4 * (3 if sample else 2)
        return self._fit(self.image_elems * itemsize, out, self.max_batch)

    def decode_chunk(self, itemsize: int, uint8: bool) -> int:
        return self._fit(self.latent_dim * itemsize, self.image_elems * (1 if uint8 else 4), self.max_batch)

    def reconstruct_chunk(self, itemsize: int, uint8: bool) -> int:
        return self._fit(self.image_elems * itemsize, self.image_elems * (1 if uint8 else 4), self.max_batch)

    def sample_bytes(self, uint8: bool, latents: bool) -> int:
        return self.image_elems * (1 if uint8 else 4) + (self.latent_dim * 4 if latents else 0)

    def sample_unary_ok(self, n: int, uint8: bool, latents: bool) -> bool:
        """Whether one unary Sample can carry n samples (else SampleStream, same images)."""
        if self.max_sample_n and n > self.max_sample_n:
            return False
        return n * self.sample_bytes(uint8, latents) <= self.max_reply_bytes - MARGIN_BYTES

    def stream_chunk(self, n: int, uint8: bool, latents: bool) -> int:
        """Samples per streamed message: under the reply limit, max_sample_n and n."""
        return max(1, min(n, self._fit(1, self.sample_bytes(uint8, latents), self.max_sample_n)))

    def check_images(self, images: np.ndarray) -> np.ndarray:
        """Accept [N,C,H,W], or [N,H,W] when C is 1; a single image gets a batch axis."""
        arr = np.asarray(images)
        shape = self.input_shape
        if arr.ndim == len(shape) + 1 and tuple(arr.shape[1:]) == shape:
            return arr
        if shape[0] == 1 and arr.ndim == len(shape) and tuple(arr.shape[1:]) == shape[1:]:
            return arr[:, None]
        if tuple(arr.shape) == shape:
            return arr[None]
        if shape[0] == 1 and tuple(arr.shape) == shape[1:]:
            return arr[None, None]
        raise ValueError(f"images must have shape [N, {', '.join(map(str, shape))}]"
                         f"{' or [N, H, W]' if shape[0] == 1 else ''}, got {list(arr.shape)}")
