"""The client's TLS options against a real mTLS server: CA, client certificate, server name."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from client_helpers import ServerThread

from client import RetryPolicy, VaeClient
from client.cli import client_main
from client.errors import UnavailableError

pytestmark = [pytest.mark.timeout(180),
              pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl CLI")]


def _ssl(folder: Path, *args: str) -> None:
    subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True, timeout=60)


def _cert(folder: Path, name: str, ca: str | None, san: str | None = None) -> None:
    key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", f"{name}.key"]
    if ca is None:  # self-signed CA
        _ssl(folder, "req", "-x509", *key, "-out", f"{name}.pem", "-days", "1", "-subj", f"/CN={name}")
        return
    _ssl(folder, "req", *key, "-out", f"{name}.csr", "-subj", f"/CN={name}")
    extra = []
    if san:
        (folder / f"{name}.ext").write_text(f"subjectAltName={san}\n")
        extra = ["-extfile", f"{name}.ext"]
    _ssl(folder, "x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key",
         "-CAcreateserial", "-out", f"{name}.pem", "-days", "1", *extra)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("client-pki")
    _cert(d, "ca", None)
    _cert(d, "rogue-ca", None)
    _cert(d, "server", "ca", "DNS:vae.internal")  # a name that is not the address dialled
    _cert(d, "client", "ca")
    return d


def test_mtls_with_ca_client_cert_and_server_name(tiny_model_dir, pki: Path, capsys) -> None:
    with ServerThread(tiny_model_dir, tls_cert=str(pki / "server.pem"), tls_key=str(pki / "server.key"),
                      tls_client_ca=str(pki / "ca.pem")) as srv:
        with VaeClient(srv.target, root_certificates=pki / "ca.pem", client_certificate=pki / "client.pem",
                       client_key=pki / "client.key", server_name="vae.internal") as c:
            assert c.health() == "SERVING" and c.sample(3, seed=1).images.shape == (3, 1, 8, 8)
        # The CLI flags reach the same options.
        assert client_main(["sample", "--target", srv.target, "--n", "2", "--ca", str(pki / "ca.pem"),
                            "--cert", str(pki / "client.pem"), "--key", str(pki / "client.key"),
                            "--server-name", "vae.internal"]) == 0
        assert json.loads(capsys.readouterr().out)["n"] == 2
        once = RetryPolicy(max_attempts=1)
        # A server certificate from a CA the client does not trust: the handshake fails.
        with VaeClient(srv.target, root_certificates=pki / "rogue-ca.pem",
                       client_certificate=pki / "client.pem", client_key=pki / "client.key",
                       server_name="vae.internal", retry=once, timeout=5) as c:
            with pytest.raises(UnavailableError):
                c.info()
        # No client certificate: the server refuses the connection.
        with VaeClient(srv.target, root_certificates=pki / "ca.pem", server_name="vae.internal", retry=once,
                       timeout=5) as c, pytest.raises(UnavailableError):
            c.info()


def test_tls_option_errors(pki: Path, capsys) -> None:
    with pytest.raises(ValueError, match="needs its key"):
        VaeClient("127.0.0.1:1", root_certificates=pki / "ca.pem", client_certificate=pki / "client.pem")
    assert client_main(["info", "--target", "127.0.0.1:1", "--ca", str(pki / "missing.pem")]) == 2
    assert "cannot read --ca" in capsys.readouterr().err
