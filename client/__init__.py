"""Client side of the VAE service: `VaeClient` / `AsyncVaeClient` (numpy in and out), the project's
own exceptions, and the batch jobs behind `vae generate` and `vae encode`.

Imports only the generated protos (plus grpc, numpy, Pillow, tqdm): never the service or trainer."""

from client.aio import AsyncVaeClient
from client.channel import ChannelConfig, RetryPolicy, make_config
from client.client import VaeClient
from client.errors import (
    DeadlineExceededError,
    InvalidArgumentError,
    ResourceExhaustedError,
    UnauthenticatedError,
    UnavailableError,
    VaeClientError,
    VaeRpcError,
)
from client.latent_messages import EditResult, LatentPath, ScoreResult, TraverseResult
from client.messages import EncodeResult, SampleResult

__all__ = [
    "VaeClient",
    "AsyncVaeClient",
    "ChannelConfig",
    "RetryPolicy",
    "make_config",
    "EncodeResult",
    "SampleResult",
    "ScoreResult",
    "LatentPath",
    "TraverseResult",
    "EditResult",
    "VaeClientError",
    "VaeRpcError",
    "InvalidArgumentError",
    "UnavailableError",
    "DeadlineExceededError",
    "ResourceExhaustedError",
    "UnauthenticatedError",
]
