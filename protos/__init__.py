"""Generated gRPC contract of the VAE service (source of truth: protos/vae/v1/vae.proto)."""

__all__: list[str] = []
