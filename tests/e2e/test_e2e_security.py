"""TLS, mutual TLS and bearer-token auth against real servers (certificates made at test time)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import grpc
import pytest
from e2e_helpers import ServerThread, settings_for, stub_for
from grpc_health.v1 import health_pb2, health_pb2_grpc

from protos.vae.v1 import vae_pb2

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl CLI")


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA, a server certificate for 127.0.0.1/localhost, a client certificate, and a stranger's."""
    d = tmp_path_factory.mktemp("pki")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    for ca in ("ca", "other-ca"):
        _openssl(
            "req",
            "-x509",
            *ec,
            "-keyout",
            f"{ca}.key",
            "-out",
            f"{ca}.pem",
            "-days",
            "2",
            "-subj",
            f"/CN=test {ca}",
            cwd=d,
        )
    (d / "server.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for name, ca, ext in (
        ("server", "ca", ["-extfile", "server.ext"]),
        ("client", "ca", []),
        ("stranger", "other-ca", []),
    ):
        _openssl("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}", cwd=d)
        _openssl(
            "x509",
            "-req",
            "-in",
            f"{name}.csr",
            "-CA",
            f"{ca}.pem",
            "-CAkey",
            f"{ca}.key",
            "-CAcreateserial",
            "-out",
            f"{name}.pem",
            "-days",
            "2",
            *ext,
            cwd=d,
        )
    return d


def _secure(port: int, pki: Path, client: str | None = None) -> grpc.Channel:
    creds = grpc.ssl_channel_credentials(
        root_certificates=(pki / "ca.pem").read_bytes(),
        private_key=(pki / f"{client}.key").read_bytes() if client else None,
        certificate_chain=(pki / f"{client}.pem").read_bytes() if client else None,
    )
    return grpc.secure_channel(f"127.0.0.1:{port}", creds)


def _info(ch: grpc.Channel, **kw) -> vae_pb2.ModelInfo:
    return stub_for(ch).GetModelInfo(vae_pb2.GetModelInfoRequest(), timeout=10, **kw)


def test_tls(model_dir, pki):
    with ServerThread(
        settings_for(model_dir, tls_cert=str(pki / "server.pem"), tls_key=str(pki / "server.key"))
    ) as srv:
        with _secure(srv.port, pki) as ch:
            assert _info(ch).latent_dim > 0
        with srv.channel() as plain, pytest.raises(grpc.RpcError) as err:
            _info(plain)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE


def test_mutual_tls(model_dir, pki):
    with ServerThread(
        settings_for(
            model_dir,
            tls_cert=str(pki / "server.pem"),
            tls_key=str(pki / "server.key"),
            tls_client_ca=str(pki / "ca.pem"),
        )
    ) as srv:
        with _secure(srv.port, pki, client="client") as ch:
            assert _info(ch).latent_dim > 0
        for client in (None, "stranger"):  # no client certificate; one signed by another CA
            with _secure(srv.port, pki, client=client) as ch, pytest.raises(grpc.RpcError) as err:
                _info(ch)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE


def test_bearer_token(model_dir, tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text("s3cret-token\n")
    with ServerThread(settings_for(model_dir, auth_token_file=str(token_file))) as srv, srv.channel() as ch:
        assert _info(ch, metadata=[("authorization", "Bearer s3cret-token")]).latent_dim > 0
        for metadata, reason in (
            ([], "missing bearer token"),
            ([("authorization", "Bearer wrong")], "invalid bearer token"),
            ([("authorization", "s3cret-token")], "invalid bearer token"),
        ):
            with pytest.raises(grpc.RpcError) as err:
                _info(ch, metadata=metadata)
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED and reason in err.value.details()
        # Streaming RPCs are guarded too.
        with pytest.raises(grpc.RpcError) as err:
            list(stub_for(ch).SampleStream(vae_pb2.SampleRequest(n=3), timeout=10))
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        parts = list(
            stub_for(ch).SampleStream(
                vae_pb2.SampleRequest(n=3), timeout=10, metadata=[("authorization", "Bearer s3cret-token")]
            )
        )
        assert sum(p.images.shape[0] for p in parts) == 3
        # Health stays open to probes that cannot send metadata.
        health = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert health.status == health_pb2.HealthCheckResponse.SERVING
