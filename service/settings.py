"""Service settings: one dataclass; every field is also a `VAE_*` environment variable and a flag.

Precedence: command-line flag, then environment variable, then the default below. The field list is
the single source of the flag table in docs/service.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from service.errors import SettingsError
from service.repository import VersionPolicy

__all__ = ["Settings", "build_parser", "settings_from_args", "env_name", "flag_name", "receive_limit"]

MIB = 1024 * 1024
# Headroom of the derived receive limit over the largest valid request body: protobuf framing is a few
# bytes per tensor, so a quarter more plus 64 KiB covers it and any small fields added later.
RECEIVE_HEADROOM = 1.25
RECEIVE_SLACK_BYTES = 64 * 1024
# Settings whose explicit empty value is a mistake, not "off": an empty token would serve anyone.
_NOT_EMPTY = ("auth_token", "auth_token_file")


def receive_limit(input_shape: Sequence[int], latent_dim: int, max_batch_per_request: int) -> int:
    """The default gRPC receive limit of a model: the largest request a handler can accept, plus
    headroom. A request carries at most `max_batch_per_request` rows, each an image and/or a latent
    vector, at most 4 bytes a value (float32 is the widest dtype accepted); anything larger is refused
    anyway, so grpc may refuse it before holding it in memory (RESOURCE_EXHAUSTED)."""
    per_row = 4 * (math.prod(input_shape) + latent_dim)
    return int(max_batch_per_request * per_row * RECEIVE_HEADROOM) + RECEIVE_SLACK_BYTES


# More server processes than this is a typo, not a deployment (each holds its own sessions).
MAX_PROCESSES = 256


def _f(default: Any, help_text: str, choices: tuple[str, ...] | None = None) -> Any:
    return field(default=default, metadata={"help": help_text, "choices": choices})


@dataclass
class Settings:
    model_dir: str = _f("", "model folder written by `vae export` (manifest.json, "
                                "encoder.onnx, decoder.onnx)")
    model_repository: str = _f("", "model repository REPO/NAME/VERSION/ (every model in it is served; "
                                   "instead of --model-dir)")
    version_policy: str = _f("latest", "versions served of a model without its own config.json: latest, "
                                       "latest:N, all, specific:V1,V2")
    default_model: str = _f("", "model of requests that leave `model` empty (default: the only model, "
                                "else the first by name)")
    poll_seconds: float = _f(0.0, "rescan the model repository every this many seconds and load/unload "
                                  "what changed (0 = only on SIGHUP and LoadModel/UnloadModel)")
    host: str = _f("0.0.0.0", "address the gRPC and metrics servers listen on")
    port: int = _f(50051, "gRPC port (0 picks a free port)")
    metrics_port: int = _f(8000, "Prometheus /metrics HTTP port (0 = no metrics server)")
    provider: str = _f("auto", "execution provider: auto (CUDA when usable, else CPU), cuda, cpu",
                       ("auto", "cuda", "cpu"))
    device_id: int = _f(0, "CUDA device id")
    cudnn_conv_algo_search: str = _f("HEURISTIC", "cuDNN convolution algorithm search (CUDA only)",
                                     ("EXHAUSTIVE", "HEURISTIC", "DEFAULT"))
    cuda_arena_extend_strategy: str = _f("kNextPowerOfTwo", "CUDA memory arena growth (CUDA only)",
                                         ("kNextPowerOfTwo", "kSameAsRequested"))
    cuda_mem_limit: int = _f(0, "CUDA memory arena limit in bytes (0 = no limit)")
    intra_op_threads: int = _f(1, "onnxruntime intra-op threads per graph (0 = one per core)")
    fp16: bool = _f(False, "serve the float16 graphs of the manifest (exported with --fp16)")
    grace_seconds: float = _f(30.0, "on SIGTERM/SIGINT: seconds in-flight requests may take to finish")
    dynamic_batching: bool = _f(True, "merge concurrent requests to one graph into one inference run")
    inference_workers: int = _f(2, "inference threads per graph (runs in flight at once per graph); with "
                                   "batching on, one runs any backlog, the others only backlogs of "
                                   "--parallel-batch-rows or more")
    parallel_batch_rows: int = _f(0, "rows a backlog needs before a second inference thread of its graph "
                                     "starts on it while one is busy (0 = half of --max-batch-size)")
    inline_max_rows: int = _f(8, "a request of at most this many rows that is the only call in flight "
                                 "runs on the event loop, skipping the thread hand-offs (0 = never)")
    max_batch_size: int = _f(256, "largest batch (rows) the dynamic batcher forms")
    max_queue_delay_ms: float = _f(0.0, "how long a partial batch that queued while the graph was busy "
                                        "may wait for more rows; a request to an idle graph runs at once")
    max_queue: int = _f(1024, "most requests waiting for one graph; beyond it RESOURCE_EXHAUSTED")
    max_in_flight: int = _f(1024, "most calls admitted at once (all methods); beyond it "
                                  "RESOURCE_EXHAUSTED with a retry hint")
    retry_after_ms: int = _f(100, "retry hint sent with RESOURCE_EXHAUSTED (trailers retry-after-ms and "
                                  "grpc-retry-pushback-ms)")
    max_batch_per_request: int = _f(1024, "most images (or latents) in one Encode/Decode/Reconstruct")
    max_sample_n: int = _f(1024, "most samples in one unary Sample; use SampleStream beyond it")
    max_stream_n: int = _f(10_000_000, "most samples in one SampleStream call")
    default_chunk_size: int = _f(256, "samples per SampleStream message when the request leaves it 0")
    sample_block: int = _f(0, "decode Sample latents in fixed blocks of this many rows (0 = auto: only "
                              "when the provider's rows depend on batch composition, probed at warm-up)")
    max_receive_message_bytes: int = _f(0, "largest gRPC message received, bytes (0 = derived from the "
                                           "model: the largest valid request plus headroom)")
    max_send_message_bytes: int = _f(64 * MIB, "largest gRPC message sent, bytes")
    tls_cert: str = _f("", "PEM server certificate (TLS on when set with --tls-key)")
    tls_key: str = _f("", "PEM server private key")
    tls_client_ca: str = _f("", "PEM CA bundle; when set, clients must present a "
                                    "certificate it signed (mTLS)")
    auth_token: str = _f("", "bearer token required in `authorization: Bearer <token>` metadata "
                             "(surrounding whitespace ignored; empty or blank refused)")
    auth_token_file: str = _f("", "file holding the bearer token (trailing whitespace ignored)")
    log_level: str = _f("INFO", "logging level", ("DEBUG", "INFO", "WARNING", "ERROR"))
    tune_malloc: bool = _f(True, "glibc malloc settings that return memory freed after large messages to "
                                 "the OS (`vae serve` only; see service/memory.py)")
    latent_metrics: bool = _f(True, "compute latent-statistics metrics (off the request path)")
    processes: str = _f("1", "server processes on the one port (SO_REUSEPORT), each with its own sessions "
                             "and batchers, under one parent that owns signals, health and /metrics; "
                             "auto = one per core")

    def parallel_rows(self) -> int:
        """--parallel-batch-rows resolved (0 = half of --max-batch-size, at least 1)."""
        return self.parallel_batch_rows or max(1, self.max_batch_size // 2)

    def validate(self) -> None:
        """Check cross-field rules; raises SettingsError naming the setting."""
        positive = ("inference_workers", "max_batch_size", "max_queue", "max_in_flight",
                    "max_batch_per_request", "max_sample_n", "max_stream_n", "default_chunk_size",
                    "max_send_message_bytes")
        for name in positive:
            if getattr(self, name) <= 0:
                raise SettingsError(f"{flag_name(name)} / {env_name(name)} must be > 0, "
                                    f"got {getattr(self, name)}")
        for name in ("port", "metrics_port"):
            if not 0 <= getattr(self, name) <= 65535:
                raise SettingsError(f"{flag_name(name)} must be a port number, got {getattr(self, name)}")
        for name in ("device_id", "cuda_mem_limit", "intra_op_threads", "sample_block", "parallel_batch_rows",
                     "inline_max_rows",
                     "max_receive_message_bytes", "retry_after_ms"):
            if getattr(self, name) < 0:
                raise SettingsError(f"{flag_name(name)} must be >= 0, got {getattr(self, name)}")
        if self.default_chunk_size > self.max_sample_n:
            # A SampleStream message holds at most max_sample_n samples: a larger default would make
            # every stream that leaves chunk_size at 0 fail.
            raise SettingsError(f"--default-chunk-size ({self.default_chunk_size}) must be <= --max-sample-n "
                                f"({self.max_sample_n})")
        if self.grace_seconds < 0 or self.max_queue_delay_ms < 0:
            raise SettingsError("--grace-seconds and --max-queue-delay-ms must be >= 0")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise SettingsError("TLS needs both --tls-cert and --tls-key (VAE_TLS_CERT, VAE_TLS_KEY)")
        if self.tls_client_ca and not self.tls_cert:
            raise SettingsError("--tls-client-ca (mutual TLS) needs --tls-cert and --tls-key")
        if self.auth_token and not self.auth_token.strip():
            raise SettingsError("--auth-token / VAE_AUTH_TOKEN is blank: give a token, or leave it unset "
                                "for no auth")
        if self.auth_token and self.auth_token_file:
            raise SettingsError("give the bearer token once: --auth-token or --auth-token-file, not both")
        self.process_count()
        if not self.model_dir and not self.model_repository:
            raise SettingsError("no model folder or repository: pass --model-dir DIR or --model-repository "
                                "REPO (VAE_MODEL_DIR, VAE_MODEL_REPOSITORY)")
        if self.model_dir and self.model_repository:
            raise SettingsError("give --model-dir or --model-repository, not both (a model folder is a "
                                "repository of one)")
        if self.poll_seconds < 0:
            raise SettingsError(f"--poll-seconds must be >= 0, got {self.poll_seconds}")
        VersionPolicy.parse(self.version_policy)

    def process_count(self) -> int:
        """`processes` as a number: `auto` is the cores this process may run on (at least 1)."""
        text = self.processes.strip().lower()
        if text == "auto":
            return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                       else (os.cpu_count() or 1))
        try:
            n = int(text)
        except ValueError:
            n = 0
        if not 1 <= n <= MAX_PROCESSES:
            raise SettingsError(f"--processes / VAE_PROCESSES must be auto or 1..{MAX_PROCESSES}, "
                                f"got {self.processes!r}")
        return n

    def resolved_auth_token(self) -> str:
        """The bearer token from the setting or its file ("" = auth off)."""
        if self.auth_token_file:
            try:
                token = open(self.auth_token_file, encoding="utf-8").read().strip()
            except OSError as exc:
                raise SettingsError(f"cannot read --auth-token-file {self.auth_token_file}: "
                                    f"{exc.strerror}") from None
            if not token:
                raise SettingsError(f"--auth-token-file {self.auth_token_file} is empty")
            return token
        return self.auth_token.strip()


def env_name(name: str) -> str:
    return "VAE_" + name.upper()


def flag_name(name: str) -> str:
    return "--" + name.replace("_", "-")


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _parse(kind: type, text: str, what: str) -> Any:
    if kind is bool:
        low = text.strip().lower()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
        raise SettingsError(f"{what}: expected true/false, got {text!r}")
    try:
        return kind(text)
    except ValueError:
        raise SettingsError(f"{what}: expected {kind.__name__}, got {text!r}") from None


def _field_type(f: dataclasses.Field[Any]) -> type:
    return {"str": str, "int": int, "float": float, "bool": bool}[str(f.type)]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vae serve", description="Serve an exported VAE over gRPC (health, reflection, metrics).",
        epilog="Every flag is also an environment variable: --max-batch-size is VAE_MAX_BATCH_SIZE.")
    for f in dataclasses.fields(Settings):
        kind = _field_type(f)
        help_text = f"{f.metadata['help']} [{env_name(f.name)}; default {f.default!r}]"
        if kind is bool:
            parser.add_argument(flag_name(f.name), dest=f.name, default=None,
                                action=argparse.BooleanOptionalAction, help=help_text)
        else:
            parser.add_argument(flag_name(f.name), dest=f.name, default=None, type=str,
                                metavar=f.name.upper(), help=help_text)
    return parser


def settings_from_args(argv: Sequence[str], env: Mapping[str, str] | None = None) -> Settings:
    """Flags over `VAE_*` environment over defaults; raises SettingsError on a bad value."""
    env = os.environ if env is None else env
    args = build_parser().parse_args(list(argv))
    values: dict[str, Any] = {}
    for f in dataclasses.fields(Settings):
        kind = _field_type(f)
        given = getattr(args, f.name)
        if f.name in _NOT_EMPTY and (given == "" or (given is None and env.get(env_name(f.name)) == "")):
            # Set but empty: refuse rather than start with auth off and serve anyone.
            raise SettingsError(f"{flag_name(f.name)} / {env_name(f.name)} is set but empty: give a "
                                "token, or leave it unset for no auth")
        if given is not None:
            value = given if kind is bool else _parse(kind, given, flag_name(f.name))
        elif env.get(env_name(f.name), "") != "":
            value = _parse(kind, env[env_name(f.name)], env_name(f.name))
        else:
            continue
        choices = f.metadata["choices"]
        if choices and value not in choices:
            raise SettingsError(f"{flag_name(f.name)} / {env_name(f.name)}: {value!r} is not one of "
                                + ", ".join(choices))
        values[f.name] = value
    settings = Settings(**values)
    settings.validate()
    return settings
