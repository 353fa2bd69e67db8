"""Server credentials: TLS from a PEM certificate and key; mutual TLS when a client CA is given."""

from __future__ import annotations

from pathlib import Path

import grpc

from service.errors import SettingsError
from service.settings import Settings

__all__ = ["server_credentials"]


def _read(path: str, what: str) -> bytes:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise SettingsError(f"cannot read {what} {path}: {exc.strerror}") from None
    if b"-----BEGIN" not in data:
        raise SettingsError(f"{what} {path} is not a PEM file")
    return data


def server_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    """None when TLS is off (plaintext, e.g. behind a mesh that terminates TLS)."""
    if not settings.tls_cert:
        return None
    cert = _read(settings.tls_cert, "--tls-cert")
    key = _read(settings.tls_key, "--tls-key")
    client_ca = _read(settings.tls_client_ca, "--tls-client-ca") if settings.tls_client_ca else None
    return grpc.ssl_server_credentials([(key, cert)], root_certificates=client_ca,
                                       require_client_auth=client_ca is not None)
