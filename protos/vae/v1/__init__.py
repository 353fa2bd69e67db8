"""vae.v1 messages and stubs: `from protos.vae.v1 import vae_pb2, vae_pb2_grpc`."""

from protos.vae.v1 import vae_pb2, vae_pb2_grpc

__all__ = ["vae_pb2", "vae_pb2_grpc"]
