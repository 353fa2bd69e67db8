"""Settings (flags over VAE_* over defaults) and the manifest checks, without a server."""

from __future__ import annotations

import dataclasses
import json
import shutil

import pytest

from service.errors import ModelError, SettingsError
from service.manifest import load_manifest
from service.runtime import load_model
from service.settings import Settings, build_parser, env_name, settings_from_args


def test_flags_override_env_override_defaults():
    env = {
        "VAE_MODEL_DIR": "/m",
        "VAE_PORT": "6000",
        "VAE_DYNAMIC_BATCHING": "off",
        "VAE_GRACE_SECONDS": "2.5",
    }
    s = settings_from_args(["--port", "7000"], env)
    assert (s.model_dir, s.port, s.dynamic_batching, s.grace_seconds) == ("/m", 7000, False, 2.5)
    assert s.metrics_port == 8000 and s.max_batch_size == 256 and s.host == "0.0.0.0"
    assert settings_from_args(["--model-dir", "/x", "--dynamic-batching"], env).dynamic_batching is True


def test_every_field_has_a_flag_and_a_contract_env_name():
    parser_flags = {a.dest for a in build_parser()._actions}
    for f in dataclasses.fields(Settings):
        assert f.name in parser_flags and env_name(f.name).startswith("VAE_")
    for name in (
        "VAE_MODEL_DIR",
        "VAE_HOST",
        "VAE_PORT",
        "VAE_METRICS_PORT",
        "VAE_PROVIDER",
        "VAE_DEVICE_ID",
        "VAE_GRACE_SECONDS",
        "VAE_MAX_BATCH_SIZE",
        "VAE_MAX_QUEUE_DELAY_MS",
        "VAE_DYNAMIC_BATCHING",
        "VAE_MAX_QUEUE",
        "VAE_TLS_CERT",
        "VAE_TLS_KEY",
        "VAE_TLS_CLIENT_CA",
        "VAE_AUTH_TOKEN",
        "VAE_AUTH_TOKEN_FILE",
        "VAE_LOG_LEVEL",
        "VAE_LATENT_METRICS",
    ):
        assert name in {env_name(f.name) for f in dataclasses.fields(Settings)}


@pytest.mark.parametrize(
    ("argv", "env", "needle"),
    [
        ([], {}, "no model folder"),
        (["--model-dir", "m", "--max-sample-n", "-1"], {}, "--max-sample-n"),
        (["--model-dir", "m"], {"VAE_PORT": "70000"}, "port number"),
        (["--model-dir", "m", "--auth-token", "a", "--auth-token-file", "f"], {}, "not both"),
        (["--model-dir", "m", "--tls-client-ca", "ca.pem"], {}, "mutual TLS"),
        (["--model-dir", "m"], {"VAE_LOG_LEVEL": "LOUD"}, "not one of"),
    ],
)
def test_bad_settings(argv, env, needle):
    with pytest.raises(SettingsError, match=needle):
        settings_from_args(argv, env)


def test_auth_token_file(tmp_path):
    (tmp_path / "t").write_text("  abc \n")
    assert Settings(model_dir="m", auth_token_file=str(tmp_path / "t")).resolved_auth_token() == "abc"
    (tmp_path / "e").write_text("\n")
    with pytest.raises(SettingsError, match="is empty"):
        Settings(model_dir="m", auth_token_file=str(tmp_path / "e")).resolved_auth_token()


def test_manifest_loads_and_checks(model_dir, tmp_path):
    m = load_manifest(model_dir)
    assert m.graphs["encoder"].path.name == "encoder.onnx" and len(m.sha256) == 64
    with pytest.raises(ModelError, match="no float16 graphs"):
        load_manifest(model_dir, fp16=True)
    d = tmp_path / "m"
    shutil.copytree(model_dir, d)
    raw = json.loads((d / "manifest.json").read_text())
    raw["format_version"] = 99
    (d / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(ModelError, match="format_version 99"):
        load_manifest(d)
    raw["format_version"] = 1
    raw["graphs"]["encoder"]["outputs"][0]["name"] = "mean"
    (d / "manifest.json").write_text(json.dumps(raw))
    # The shared schema rules refuse a manifest whose recorded names are not the contract's ...
    with pytest.raises(ModelError, match=r"graphs.encoder.outputs: tensors \['mean', 'logvar'\]"):
        load_manifest(d)
    # ... and the runtime still checks the real graph against what the manifest records.
    m = load_manifest(model_dir)
    enc = m.graphs["encoder"]
    renamed = dataclasses.replace(enc, outputs=(dataclasses.replace(enc.outputs[0], name="mean"),
                                                *enc.outputs[1:]))
    with pytest.raises(ModelError, match="output mu float32.*does not match manifest.json \\(mean"):
        load_model(dataclasses.replace(m, graphs={**m.graphs, "encoder": renamed}),
                   Settings(model_dir=str(model_dir), provider="cpu"))


# onnxruntime warns before the service's own check refuses; the refusal is what is under test.
@pytest.mark.filterwarnings("ignore:Specified provider 'CUDAExecutionProvider':UserWarning")
def test_cuda_asked_without_gpu_is_refused(model_dir):
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("onnxruntime-gpu is installed; this checks the CPU-only refusal")
    with pytest.raises(SettingsError, match="--provider cuda asked"):
        load_model(load_manifest(model_dir), Settings(model_dir=str(model_dir), provider="cuda"))
