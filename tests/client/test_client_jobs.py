"""`vae generate` / `vae encode` against real servers: the same bytes whatever the concurrency or the
process split, resume after SIGKILL, a server restarted mid-job, and clear failures for a wrong target
or a server that never answers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from client_helpers import ROOT, VAE, ServeProcess, ServerThread, SilentServer, env, free_port, run_vae

from client.generate import shard_seed
from client.jobs_cli import encode_main, generate_main

pytestmark = pytest.mark.timeout(300)

JOB = ["--n", "900", "--shard-size", "100", "--seed", "11", "--no-progress"]


def _files(folder: Path) -> dict[str, bytes]:
    """Every result file of a job folder (shards, records, PNGs, manifest), not locks or temp files."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and not p.name.startswith(".")}


@pytest.fixture(scope="module")
def reference(server: ServerThread, tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    out = tmp_path_factory.mktemp("gen") / "ref"
    assert generate_main(["--target", server.target, "--out", str(out), "--concurrency", "1", *JOB]) == 0
    return _files(out)


def test_generate_output_layout(reference: dict[str, bytes], server: ServerThread, tmp_path: Path) -> None:
    shards = sorted(k for k in reference if k.endswith(".npz"))
    assert shards == [f"shard-{i:05d}.npz" for i in range(9)]
    man = json.loads(reference["manifest.json"])
    assert man["complete"] and man["total_shards"] == 9 and man["images_done"] == 900
    assert man["params"]["seed"] == 11 and man["params"]["n"] == 900
    (tmp_path / "s.npz").write_bytes(reference["shard-00003.npz"])
    with np.load(tmp_path / "s.npz") as z:
        assert z["images"].dtype == np.uint8 and z["images"].shape == (100, 1, 8, 8)
        assert z["latents"].shape == (100, 4) and z["latents"].dtype == np.float32
        assert np.array_equal(z["index"], np.arange(300, 400))
        assert (z["seeds"] == shard_seed(11, 3)).all()
        rec = man["shards"][3]
        assert rec["seed"] == shard_seed(11, 3) and rec["count"] == 100
        # Each image is reproducible from its stored seed with a plain Sample call.
        from client import VaeClient

        with VaeClient(server.target) as c:
            k = 42
            again = c.sample(int(z["sample_index"][k]) + 1, seed=int(z["seeds"][k]), uint8=True)
            assert np.array_equal(again.images[-1], z["images"][k])
    import hashlib

    assert rec["sha256"] == hashlib.sha256(reference["shard-00003.npz"]).hexdigest()


def test_same_bytes_at_concurrency_4_and_over_two_targets(reference, server, tmp_path: Path) -> None:
    out = tmp_path / "c4"
    targets = f"{server.target},{server.target}"
    assert generate_main(["--target", targets, "--out", str(out), "--concurrency", "4", *JOB]) == 0
    assert _files(out) == reference


def test_same_bytes_with_three_processes(reference, server, tmp_path: Path) -> None:
    out = tmp_path / "p3"
    procs = [subprocess.Popen([*VAE, "generate", "--target", server.target, "--out", str(out), *JOB,
                               "--num-shards", "3", "--shard-index", str(i)], env=env(), cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(3)]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    assert _files(out) == reference


def test_kubernetes_completion_index(reference, server, tmp_path: Path, monkeypatch) -> None:
    out = tmp_path / "k8s"
    for i in (2, 0, 1):  # any order
        monkeypatch.setenv("JOB_COMPLETION_INDEX", str(i))
        assert generate_main(["--target", server.target, "--out", str(out), *JOB, "--num-shards", "3"]) == 0
    assert _files(out) == reference
    monkeypatch.setenv("JOB_COMPLETION_INDEX", "1")
    assert generate_main(["--target", server.target, "--out", str(tmp_path / "x"), *JOB]) == 2


def test_sigkill_then_rerun_is_byte_identical(reference, server, tmp_path: Path) -> None:
    out = tmp_path / "killed"
    # Many small shards so the job is still running when it is killed.
    proc = subprocess.Popen([*VAE, "generate", "--target", server.target, "--out", str(out), *JOB[:2],
                             "--shard-size", "5", "--seed", "11", "--concurrency", "1", "--no-progress"],
                            env=env(), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        end = time.monotonic() + 60
        while time.monotonic() < end and len(list(out.glob("shard-*.json"))) < 3 and proc.poll() is None:
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    done_before = len(list(out.glob("shard-*.json")))
    assert 3 <= done_before < 180
    assert not (out / "manifest.json").exists()
    rc = generate_main(["--target", server.target, "--out", str(out), *JOB[:2], "--shard-size", "5",
                        "--seed", "11", "--concurrency", "3", "--no-progress"])
    assert rc == 0
    assert not [p.name for p in out.glob(".shard-*")], "temp files of the killed run are cleaned up"
    # An uninterrupted run of the same job, for comparison.
    full = tmp_path / "full"
    assert generate_main(["--target", server.target, "--out", str(full), *JOB[:2], "--shard-size", "5",
                          "--seed", "11", "--no-progress"]) == 0
    assert _files(out) == _files(full)


def test_corrupt_shard_is_redone_and_other_job_refused(reference, server, tmp_path: Path, capsys) -> None:
    out = tmp_path / "corrupt"
    assert generate_main(["--target", server.target, "--out", str(out), *JOB]) == 0
    shard = out / "shard-00004.npz"
    data = bytearray(shard.read_bytes())
    data[-20] ^= 0xFF
    shard.write_bytes(bytes(data))
    (out / "shard-00006.json").unlink()
    capsys.readouterr()
    assert generate_main(["--target", server.target, "--out", str(out), *JOB]) == 0
    assert "2 shards written, 7 already done" in capsys.readouterr().err
    assert _files(out) == reference
    assert generate_main(["--target", server.target, "--out", str(out), *JOB, "--seed", "12"]) == 2
    assert "holds a different job (seed: 11 here vs 12 asked)" in capsys.readouterr().err


def test_png_format(server, tmp_path: Path) -> None:
    out = tmp_path / "png"
    assert generate_main(["--target", server.target, "--out", str(out), "--n", "30", "--shard-size", "16",
                          "--format", "png", "--no-progress"]) == 0
    pngs = sorted(p.name for p in (out / "shard-00001").iterdir())
    assert pngs == [f"{i:08d}.png" for i in range(16, 30)]
    from PIL import Image

    with np.load(out / "shard-00001.npz") as z, Image.open(out / "shard-00001" / "00000020.png") as im:
        assert np.array_equal(np.asarray(im), z["images"][4, 0])


def test_server_restarted_mid_job_still_completes(tiny_model_dir, tmp_path: Path) -> None:
    srv = ServeProcess(tiny_model_dir, tmp_path / "serve.log").start()
    out = tmp_path / "restart"
    job = subprocess.Popen([*VAE, "generate", "--target", srv.target, "--out", str(out), "--n", "600",
                            "--shard-size", "3", "--seed", "5", "--concurrency", "1", "--no-progress",
                            "--retries", "5"], env=env(), cwd=ROOT, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    try:
        end = time.monotonic() + 60
        while time.monotonic() < end and len(list(out.glob("shard-*.json"))) < 5 and job.poll() is None:
            time.sleep(0.01)
        srv.kill()  # crash: connections drop mid-job
        killed_at = len(list(out.glob("shard-*.json")))
        time.sleep(0.5)
        assert job.poll() is None, "the job must wait for the server, not give up"
        srv.start(wait=False)  # the job's retries are what waits for it
        _, err = job.communicate(timeout=180)
    finally:
        if job.poll() is None:
            job.kill()
            job.wait()
        srv.kill()
    assert job.returncode == 0, err
    assert killed_at < 200
    man = json.loads((out / "manifest.json").read_text())
    assert man["complete"] and man["images_done"] == 600
    with ServerThread(tiny_model_dir) as ref_srv:
        ref = tmp_path / "ref"
        assert generate_main(["--target", ref_srv.target, "--out", str(ref), "--n", "600",
                              "--shard-size", "3", "--seed", "5", "--no-progress"]) == 0
    assert _files(out) == _files(ref)


def test_wrong_target_fails_clearly(tmp_path: Path) -> None:
    port = free_port()
    r = run_vae(["generate", "--target", f"127.0.0.1:{port}", "--out", str(tmp_path / "o"), "--n", "10",
                 "--retries", "2", "--timeout", "2", "--no-progress"], timeout=60)
    assert r.returncode == 1
    assert f"127.0.0.1:{port}" in r.stderr and "UNAVAILABLE" in r.stderr and "Traceback" not in r.stderr
    r = run_vae(["health", "--target", f"127.0.0.1:{port}", "--timeout", "2"], timeout=60)
    assert r.returncode == 1 and "UNAVAILABLE" in r.stderr


def test_silent_server_fails_within_deadline(tmp_path: Path) -> None:
    with SilentServer() as silent:
        r = run_vae(["generate", "--target", silent.target, "--out", str(tmp_path / "o"), "--n", "10",
                     "--timeout", "2", "--no-progress"], timeout=60)
        assert r.returncode == 1
        assert "DEADLINE_EXCEEDED" in r.stderr and silent.target in r.stderr and "Traceback" not in r.stderr
        r = run_vae(["health", "--target", silent.target, "--timeout", "1"], timeout=60)
        assert r.returncode == 1 and "DEADLINE_EXCEEDED" in r.stderr


def test_bad_flags_exit_2(server, tmp_path: Path, capsys) -> None:
    base = ["--target", server.target, "--out", str(tmp_path / "o")]
    for extra, msg in ((["--n", "0"], "--n must be >= 1"),
                       (["--n", "5", "--temperature", "-1"], "temperature"),
                       (["--n", "5", "--num-shards", "2", "--shard-index", "2"], "--shard-index"),
                       (["--n", "x"], "invalid int value")):
        assert generate_main([*base, *extra]) == 2
        assert msg in capsys.readouterr().err
    assert generate_main(["--target", "nonsense", "--out", "o", "--n", "3"]) == 2
    assert "HOST:PORT" in capsys.readouterr().err


def test_encode_job_resumes_and_matches_the_client(server, tmp_path: Path, capsys) -> None:
    from sklearn.datasets import load_digits

    images = (load_digits().images[:700] * (255 / 16)).round().astype(np.uint8)
    data = tmp_path / "digits.npy"
    np.save(data, images)
    out = tmp_path / "lat.npz"
    args = ["--target", server.target, "--data", str(data), "--out", str(out), "--chunk-size", "100",
            "--no-progress"]
    assert encode_main([*args, "--num-shards", "2", "--shard-index", "0"]) == 0
    assert not out.exists()  # half the chunks: not assembled yet
    assert "4/7 chunks done" in capsys.readouterr().err
    assert encode_main([*args, "--num-shards", "2", "--shard-index", "1"]) == 0
    first = out.read_bytes()
    with np.load(out) as z:
        mu, logvar = z["mu"], z["logvar"]
    from client import VaeClient

    with VaeClient(server.target) as c:
        direct = c.encode(images)
    assert mu.shape == (700, 4) and np.allclose(mu, direct.mu, atol=1e-5)
    assert np.allclose(logvar, direct.logvar, atol=1e-5)
    capsys.readouterr()
    assert encode_main(args) == 0  # nothing left to do; the output is rebuilt byte for byte
    assert "7 already done" in capsys.readouterr().err and out.read_bytes() == first
    np.save(data, images[:600])
    assert encode_main(args) == 2
    assert "different job" in capsys.readouterr().err
    assert encode_main([*args[:2], "--data", str(tmp_path / "missing"), "--out", str(out)]) == 2
    assert "no such file" in capsys.readouterr().err
    assert os.path.exists(out)


def test_server_gone_for_good_fails_naming_shards_then_resumes(tiny_model_dir, tmp_path: Path) -> None:
    srv = ServeProcess(tiny_model_dir, tmp_path / "serve.log").start()
    out = tmp_path / "gone"
    cmd = [*VAE, "generate", "--target", srv.target, "--out", str(out), "--n", "600", "--shard-size", "3",
           "--seed", "8", "--concurrency", "2", "--no-progress", "--retries", "2", "--shard-attempts", "2"]
    job = subprocess.Popen(cmd, env=env(), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True)
    try:
        end = time.monotonic() + 60
        while time.monotonic() < end and len(list(out.glob("shard-*.json"))) < 5 and job.poll() is None:
            time.sleep(0.01)
        srv.kill()
        _, err = job.communicate(timeout=120)
    finally:
        if job.poll() is None:
            job.kill()
            job.wait()
    assert job.returncode == 1
    assert "shard(s) failed after retries" in err and "UNAVAILABLE" in err and "Traceback" not in err
    assert "not started: servers unreachable" in err  # it stopped early instead of trying every shard
    man = json.loads((out / "manifest.json").read_text())
    assert not man["complete"] and 0 < man["shards_done"] < 200
    with srv:
        assert generate_main(cmd[4:]) == 0  # a rerun (same port) finishes the job
    assert json.loads((out / "manifest.json").read_text())["complete"]
