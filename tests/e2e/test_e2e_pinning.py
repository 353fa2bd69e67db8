"""Version pinning for real: every reply names its producer, a client pins the version of its first
reply for the rest of its work, and `vae generate` keeps a job on one version across a swap."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from e2e_helpers import ServerThread, settings_for

from client.client import VaeClient
from client.errors import NotFoundError
from protos.vae.v1 import vae_pb2


@pytest.fixture()
def repo(tmp_path: Path, tiny_model_dir: Path, tiny_conv_model_dir: Path) -> Path:
    root = tmp_path / "repo"
    shutil.copytree(tiny_model_dir, root / "vae" / "1")
    return root


def test_a_pinned_client_stays_on_its_version_across_a_swap(repo: Path, tiny_conv_model_dir: Path,
                                                            tmp_path: Path) -> None:
    with ServerThread(settings_for("", model_repository=str(repo))) as srv:
        target = f"127.0.0.1:{srv.port}"
        z = np.random.default_rng(0).standard_normal((4, 4)).astype(np.float32)
        with VaeClient(target, pin=True) as pinned, VaeClient(target) as free:
            before = pinned.decode(z)
            assert (pinned.pin.model, pinned.pin.version) == ("vae", "1")
            # Version 2 arrives and becomes the default; version 1 stays served (LoadModel of it).
            shutil.copytree(tiny_conv_model_dir, repo / "vae" / "2")
            srv.call(srv.server.models.load("vae", "1"), timeout=60)  # type: ignore[union-attr]
            assert free.info(refresh=True).version == "2"
            assert np.array_equal(pinned.decode(z), before)  # still version 1's images
            assert not np.array_equal(free.decode(z), before)
            # Once version 1 is unloaded the pinned client fails loudly instead of mixing versions.
            srv.call(srv.server.models.unload("vae", "1"), timeout=60)  # type: ignore[union-attr]
            with pytest.raises(NotFoundError, match="version '1' is not served"):
                pinned.decode(z)
        with VaeClient(target, model="vae", version="2") as chosen:
            assert chosen.info().version == "2"


def test_generate_job_stays_on_the_version_it_started_on(repo: Path, tiny_conv_model_dir: Path,
                                                         tmp_path: Path) -> None:
    out = tmp_path / "job"
    with ServerThread(settings_for("", model_repository=str(repo), version_policy="all")) as srv:
        cmd = [sys.executable, "-m", "vae_cli.main", "generate", "--target", f"127.0.0.1:{srv.port}",
               "--n", "8", "--shard-size", "4", "--out", str(out), "--num-shards", "2", "--no-progress"]
        first = subprocess.run([*cmd, "--shard-index", "0"], capture_output=True, text=True, timeout=120)
        assert first.returncode == 0, first.stderr
        assert json.loads((out / "job.json").read_text())["params"]["version"] == "1"
        # A new version becomes the default in the middle of the job...
        shutil.copytree(tiny_conv_model_dir, repo / "vae" / "2")
        srv.call(srv.server.reload(), timeout=60)  # type: ignore[union-attr]
        assert srv.server.models.resolve().version == "2"  # type: ignore[union-attr]
        # ...and the job's second process still samples from version 1.
        second = subprocess.run([*cmd, "--shard-index", "1"], capture_output=True, text=True, timeout=120)
        assert second.returncode == 0, second.stderr
        with VaeClient(f"127.0.0.1:{srv.port}", model="vae", version="1") as v1:
            want = v1.sample(4, seed=json.loads((out / "shard-00001.json").read_text())["seed"], uint8=True)
        got = np.load(out / "shard-00001.npz")["images"]
        assert np.array_equal(got, want.images)


def test_replies_without_a_version_are_not_pinned() -> None:
    from client.pinning import ModelPin, VersionMixError

    pin = ModelPin(sticky=True)
    pin.observe(vae_pb2.DecodeResponse(), "Decode")  # an older server: no version to pin
    assert pin.version == ""
    pin.observe(vae_pb2.DecodeResponse(model="m", version="3"), "Decode")
    assert (pin.model, pin.version) == ("m", "3")
    with pytest.raises(VersionMixError, match="pinned to m version 3"):
        pin.observe(vae_pb2.DecodeResponse(model="m", version="4"), "Decode")
