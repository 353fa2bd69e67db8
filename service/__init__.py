"""gRPC service for an exported VAE: onnxruntime sessions, dynamic batching, health, metrics.

Imports only `protos`, numpy, grpc, onnxruntime and prometheus_client: never torch, never the exporter.
Entry points: `service.server.create_server` and `service.cli.serve_main` (`vae serve`).
"""

__all__: list[str] = []
