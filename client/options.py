"""Command-line options shared by `vae client`, `vae health`, `vae generate` and `vae encode`: how to
reach the server (TLS, token, deadline, retries, message size), and the bad-input exit path."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from client.channel import DEFAULT_MAX_MESSAGE_BYTES, MAX_ATTEMPTS, ChannelConfig, RetryPolicy, read_bytes

__all__ = ["add_connection_args", "configs_from_args", "ArgParser", "BadInput", "fail"]

TOKEN_ENV = "VAE_AUTH_TOKEN"


class BadInput(Exception):
    """Raised by ArgParser instead of exiting, so the CLIs return 2 with one line on stderr."""


class ArgParser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise BadInput(f"{self.prog}: {message}")


def fail(prog: str, message: str, code: int) -> int:
    print(f"{prog}: error: {message}", file=sys.stderr)
    return code


def add_connection_args(p: argparse.ArgumentParser, *, default_timeout: float = 30.0,
                        default_retries: int = 5, many_targets: bool = False) -> None:
    g = p.add_argument_group("connection")
    many = "[,HOST:PORT...]" if many_targets else ""
    g.add_argument("--target", required=True, metavar="HOST:PORT" + many,
                   help="server address" + ("es; shards are spread over them" if many_targets else ""))
    g.add_argument("--timeout", type=float, default=default_timeout, metavar="S",
                   help=f"deadline of each call, its retries included, seconds (default {default_timeout:g})")
    g.add_argument("--retries", type=int, default=default_retries, metavar="N",
                   help=f"attempts per call on UNAVAILABLE / RESOURCE_EXHAUSTED, 1..{MAX_ATTEMPTS}, with "
                        f"exponential backoff or the server's pushback (default {default_retries})")
    g.add_argument("--tls", action="store_true", help="use TLS with the system's root certificates")
    g.add_argument("--ca", metavar="PEM", help="CA bundle that signed the server certificate (implies --tls)")
    g.add_argument("--cert", metavar="PEM", help="client certificate, for servers that require mTLS")
    g.add_argument("--key", metavar="PEM", help="client private key (with --cert)")
    g.add_argument("--server-name", metavar="NAME", help="expected name in the server certificate")
    g.add_argument("--token", metavar="TOKEN",
                   help=f"bearer token (default: ${TOKEN_ENV}); prefer --token-file on shared machines")
    g.add_argument("--token-file", metavar="FILE", help="file holding the bearer token")
    g.add_argument("--max-message-bytes", type=int, default=DEFAULT_MAX_MESSAGE_BYTES, metavar="B",
                   help="client's gRPC message limit; requests are also split under the server's")


def _token(args: argparse.Namespace) -> str | None:
    if args.token and args.token_file:
        raise ValueError("give the token once: --token or --token-file")
    if args.token_file:
        try:
            tok = Path(args.token_file).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ValueError(f"cannot read --token-file {args.token_file}: {exc.strerror or exc}") from None
        if not tok:
            raise ValueError(f"--token-file {args.token_file} is empty")
        return tok
    return args.token or os.environ.get(TOKEN_ENV) or None


def configs_from_args(args: argparse.Namespace, *, job_backoff: bool = False) -> list[ChannelConfig]:
    """One ChannelConfig per comma-separated target. Raises ValueError on bad values."""
    targets = [t.strip() for t in args.target.split(",") if t.strip()]
    if not targets:
        raise ValueError("--target needs HOST:PORT")
    for t in targets:
        host, _, port = t.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"--target {t!r} is not HOST:PORT")
    if not 1 <= args.retries <= MAX_ATTEMPTS:
        raise ValueError(f"--retries must be 1..{MAX_ATTEMPTS} (gRPC's retry policy makes at most "
                         f"{MAX_ATTEMPTS} attempts), got {args.retries}")
    # Jobs wait longer between attempts: a replica restarting takes seconds, not milliseconds
    # (0.5 + 1 + 2 + 4 s at most before the fifth attempt; each shard then has its own attempts).
    retry = (RetryPolicy(max_attempts=args.retries, initial_backoff=0.5, max_backoff=8.0) if job_backoff
             else RetryPolicy(max_attempts=args.retries))
    root = read_bytes(args.ca, "--ca")
    cert = read_bytes(args.cert, "--cert")
    key = read_bytes(args.key, "--key")
    token = _token(args)
    return [ChannelConfig(target=t, tls=bool(args.tls), root_certificates=root, client_certificate=cert,
                          client_key=key, server_name=args.server_name, token=token, timeout=args.timeout,
                          max_message_bytes=args.max_message_bytes, retry=retry) for t in targets]
