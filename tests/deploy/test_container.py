"""The real image build and run (`make test-container`; marker `container`): scripts/container_test.sh
builds a local Debian base with mmdebstrap, the Dockerfile with buildah (CPU onnxruntime), runs the
image's `vae serve` on the session's tiny exported model and checks it through the image's own
HEALTHCHECK and from outside. The trainer target, the training Job's script and the Indexed Job's
command run too unless VAE_CT_TRAINER=0. The full log goes to .bench/container/container_test.log."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from deploy_helpers import ROOT

pytestmark = pytest.mark.container
TOOLS = ("mmdebstrap", "buildah", "podman")


@pytest.mark.timeout(3600)
def test_build_and_serve_the_image(tiny_model_dir: Path) -> None:
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        pytest.fail(f"needs {', '.join(missing)}: apt-get install mmdebstrap buildah podman uidmap "
                    "fuse-overlayfs slirp4netns runc")
    cmd = ["bash", str(ROOT / "scripts" / "container_test.sh"), "--model", str(tiny_model_dir)]
    if os.environ.get("VAE_CT_TRAINER", "1") != "0":
        cmd.append("--trainer")
    log_dir = ROOT / ".bench" / "container"
    log_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=3500)
    wall = time.monotonic() - t0
    log = proc.stdout + proc.stderr
    record = f"$ {' '.join(cmd)}\n{log}\nwall {wall:.0f}s rc {proc.returncode}\n"
    (log_dir / "container_test.log").write_text(record, encoding="utf-8")
    assert proc.returncode == 0, log[-6000:]
    assert "HEALTHCHECK (vae health inside the container) passed" in log
    assert "(server): SERVING" in log and "vae.v1.VaeService: SERVING" in log
    assert "PASS: all container checks passed" in log
