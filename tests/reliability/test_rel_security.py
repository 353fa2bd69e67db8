"""Intruders: plaintext against TLS, a certificate from an unknown CA against mTLS, missing or wrong
bearer tokens on every method, tokens kept out of every log, and a non-root container user.
Certificates are made at test time with the openssl CLI."""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from e2e_helpers import ServerThread, settings_for, tensor
from grpc_health.v1 import health_pb2, health_pb2_grpc
from rel_helpers import ROOT, ServeProcess, child_env, make_pki

from protos.vae.v1 import vae_pb2, vae_pb2_grpc

needs_openssl = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl CLI")
TOKEN = "rel-9f3c1e-secret-token-value"
WRONG = "rel-guess-of-the-token-0000"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_pki(tmp_path_factory.mktemp("pki"))


def _creds(pki: Path, client: str | None = None) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(
        root_certificates=(pki / "ca.pem").read_bytes(),
        private_key=(pki / f"{client}.key").read_bytes() if client else None,
        certificate_chain=(pki / f"{client}.pem").read_bytes() if client else None,
    )


def _info(channel: grpc.Channel, **kw: Any) -> vae_pb2.ModelInfo:
    return vae_pb2_grpc.VaeServiceStub(channel).GetModelInfo(vae_pb2.GetModelInfoRequest(), timeout=10, **kw)


def _raw_plaintext_probe(port: int) -> bytes:
    """An HTTP/2 preface and junk in clear text to a TLS port: the server must just close on us."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00" * 64 + b"GET / HTTP/1.1\r\n\r\n")
        try:
            return s.recv(4096)
        except (ConnectionResetError, TimeoutError):
            return b""


@needs_openssl
def test_tls_refuses_plaintext(tiny_model_dir: Path, pki: Path) -> None:
    settings = settings_for(tiny_model_dir, tls_cert=str(pki / "server.pem"), tls_key=str(pki / "server.key"))
    with ServerThread(settings) as srv:
        with grpc.insecure_channel(f"127.0.0.1:{srv.port}") as plain, pytest.raises(grpc.RpcError) as err:
            _info(plain)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        reply = _raw_plaintext_probe(srv.port)
        assert b"HTTP/1.1 200" not in reply and b"vae" not in reply
        with grpc.secure_channel(f"127.0.0.1:{srv.port}", _creds(pki)) as ch:
            assert _info(ch).latent_dim == 4  # still up, and TLS clients are served


@needs_openssl
def test_mtls_refuses_unknown_ca_and_no_certificate(tiny_model_dir: Path, pki: Path) -> None:
    settings = settings_for(
        tiny_model_dir,
        tls_cert=str(pki / "server.pem"),
        tls_key=str(pki / "server.key"),
        tls_client_ca=str(pki / "ca.pem"),
    )
    with ServerThread(settings) as srv:
        target = f"127.0.0.1:{srv.port}"
        for client in ("stranger", None):  # signed by a rogue CA; no certificate at all
            with grpc.secure_channel(target, _creds(pki, client)) as ch, pytest.raises(grpc.RpcError) as err:
                _info(ch)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE, client
        # The stranger's own CA as trust root changes nothing: the server decides.
        rogue = grpc.ssl_channel_credentials(
            (pki / "ca.pem").read_bytes(),
            (pki / "stranger.key").read_bytes(),
            (pki / "rogue-ca.pem").read_bytes() + (pki / "stranger.pem").read_bytes(),
        )
        with grpc.secure_channel(target, rogue) as ch, pytest.raises(grpc.RpcError):
            _info(ch)
        with grpc.secure_channel(target, _creds(pki, "client")) as ch:
            assert _info(ch).latent_dim == 4


def _all_methods(stub: vae_pb2_grpc.VaeServiceStub, metadata: Any) -> dict[str, grpc.StatusCode]:
    x = tensor(np.full((1, 1, 8, 8), 0.5, np.float32))
    calls = {
        "GetModelInfo": lambda: stub.GetModelInfo(
            vae_pb2.GetModelInfoRequest(), timeout=10, metadata=metadata
        ),
        "Encode": lambda: stub.Encode(vae_pb2.EncodeRequest(images=x), timeout=10, metadata=metadata),
        "Decode": lambda: stub.Decode(
            vae_pb2.DecodeRequest(z=tensor(np.zeros((1, 4), np.float32))), timeout=10, metadata=metadata
        ),
        "Sample": lambda: stub.Sample(vae_pb2.SampleRequest(n=1), timeout=10, metadata=metadata),
        "Reconstruct": lambda: stub.Reconstruct(
            vae_pb2.ReconstructRequest(images=x), timeout=10, metadata=metadata
        ),
        "SampleStream": lambda: list(
            stub.SampleStream(vae_pb2.SampleRequest(n=3), timeout=10, metadata=metadata)
        ),
    }
    codes = {}
    for name, call in calls.items():
        try:
            call()
            codes[name] = grpc.StatusCode.OK
        except grpc.RpcError as exc:
            codes[name] = exc.code()
    return codes


BAD_METADATA = {
    "missing": [],
    "wrong": [("authorization", f"Bearer {WRONG}")],
    "no-scheme": [("authorization", TOKEN)],
    "scheme-only": [("authorization", "Bearer")],
    "scheme-and-blank": [("authorization", "Bearer    ")],
    "prefix-of-token": [("authorization", f"Bearer {TOKEN[:-1]}")],
    "token-plus-one": [("authorization", f"Bearer {TOKEN}x")],
    "empty": [("authorization", "")],
    "wrong-header": [("x-api-key", TOKEN)],
    "basic-scheme": [("authorization", f"Basic {TOKEN}")],
}


def test_missing_or_wrong_token_unauthenticated_everywhere(tiny_model_dir: Path, tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    with (
        ServerThread(settings_for(tiny_model_dir, auth_token_file=str(token_file))) as srv,
        srv.channel() as ch,
    ):
        stub = vae_pb2_grpc.VaeServiceStub(ch)
        for case, metadata in BAD_METADATA.items():
            codes = _all_methods(stub, metadata)
            assert set(codes.values()) == {grpc.StatusCode.UNAUTHENTICATED}, (case, codes)
        # Reflection would list the API: guarded too.
        from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

        refl = reflection_pb2_grpc.ServerReflectionStub(ch)
        with pytest.raises(grpc.RpcError) as err:
            list(
                refl.ServerReflectionInfo(
                    iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10
                )
            )
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        # The scheme in any letter case (RFC 7235: schemes are case-insensitive); the token exact.
        for scheme in ("Bearer", "bearer", "BEARER", "bEaReR"):
            good = _all_methods(stub, [("authorization", f"{scheme} {TOKEN}")])
            assert set(good.values()) == {grpc.StatusCode.OK}, (scheme, good)
        # Health stays open for probes, and reveals nothing else.
        health = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert health.status == health_pb2.HealthCheckResponse.SERVING


def test_tokens_never_in_logs(tiny_model_dir: Path, tmp_path: Path) -> None:
    """Server at DEBUG with the token in its environment; clients send right, wrong and missing tokens
    through the CLI (errors included): neither the token nor the wrong guess appears in any output."""
    log = tmp_path / "serve.log"
    env = child_env(VAE_AUTH_TOKEN=TOKEN, VAE_LOG_LEVEL="DEBUG")
    outputs: list[str] = []
    with ServeProcess(tiny_model_dir, log, env=env) as srv:
        for token in (TOKEN, WRONG, None):
            for cmd in (["client", "info"], ["client", "sample", "--n", "2"], ["health"]):
                argv = [sys.executable, "-m", "vae_cli.main", *cmd, "--target", srv.target, "--retries", "1"]
                if token:
                    argv += ["--token", token]
                proc = subprocess.run(
                    argv, env=child_env(), cwd=ROOT, capture_output=True, text=True, timeout=120
                )
                outputs += [proc.stdout, proc.stderr]
                if token == TOKEN or cmd == ["health"]:
                    assert proc.returncode == 0, proc.stderr
                else:
                    assert proc.returncode != 0 and "UNAUTHENTICATED" in proc.stderr, proc.stderr
        with grpc.insecure_channel(srv.target) as ch:
            _all_methods(vae_pb2_grpc.VaeServiceStub(ch), [("authorization", f"Bearer {WRONG}")])
        srv.terminate()
        assert srv.wait(timeout=60) == 0
    text = srv.text()
    assert "DEBUG" in text or "INFO" in text  # the log really was written
    for secret in (TOKEN, WRONG, TOKEN[: len(TOKEN) // 2]):
        assert secret not in text, "token in the server log"
        for out in outputs:
            assert secret not in out, "token in client output"


def _stages(dockerfile: str) -> dict[str, list[str]]:
    stages: dict[str, list[str]] = {}
    current = ""
    for line in dockerfile.replace("\\\n", " ").splitlines():
        m = re.match(r"\s*FROM\s+\S+(?:\s+AS\s+(\S+))?", line, re.IGNORECASE)
        if m:
            current = m.group(1) or f"stage{len(stages)}"
            stages[current] = []
        elif current:
            stages[current].append(line.strip())
    return stages


def test_container_user_is_non_root() -> None:
    """Every stage that ships (the serve and trainer images, and the last stage, the default target)
    runs as a numeric, non-zero uid:gid, so `runAsNonRoot` can verify it without /etc/passwd."""
    stages = _stages((ROOT / "Dockerfile").read_text())
    shipped = {name for name in stages if name in ("serve", "trainer")} | {list(stages)[-1]}
    for name in shipped:
        users = [line.split(None, 1)[1] for line in stages[name] if line.upper().startswith("USER ")]
        assert users, f"stage {name} sets no USER (would run as root)"
        uid, _, gid = users[-1].partition(":")
        assert uid.isdigit() and int(uid) != 0, (name, users[-1])
        assert not gid or (gid.isdigit() and int(gid) != 0), (name, users[-1])


@pytest.mark.parametrize(
    ("args", "env"),
    [
        (["--auth-token", ""], {}),
        (["--auth-token", "   "], {}),
        ([], {"VAE_AUTH_TOKEN": ""}),
        ([], {"VAE_AUTH_TOKEN": " \t "}),
        (["--auth-token-file", ""], {}),
    ],
    ids=["flag-empty", "flag-blank", "env-empty", "env-blank", "file-flag-empty"],
)
def test_empty_or_blank_token_refuses_to_start(
    tiny_model_dir: Path, args: list[str], env: dict[str, str]
) -> None:
    """An empty or blank token is a mistake, not "auth off": refused at start, exit 2, one line."""
    argv = [sys.executable, "-m", "vae_cli.main", "serve", "--model-dir", str(tiny_model_dir), "--host",
            "127.0.0.1", "--port", "0", "--metrics-port", "0", *args]
    proc = subprocess.run(argv, env=child_env(**env), cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    # `python -m vae_cli.main` itself may add runpy's module warning; the CLI's own output is the rest.
    lines = [line for line in proc.stderr.strip().splitlines() if not line.startswith("<frozen runpy>")]
    assert len(lines) == 1 and lines[0].startswith("vae serve: "), proc.stderr
    assert "Traceback" not in proc.stderr
    assert "token" in lines[0] and ("empty" in lines[0] or "blank" in lines[0]), lines[0]
