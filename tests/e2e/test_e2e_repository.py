"""A model repository served for real: two models and two versions at once, routing by name and
version, NOT_FOUND with what is served, ListModels, LoadModel/UnloadModel, a corrupt version refused and
reported, metrics labelled by model and version, `vae export --repository`."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import grpc
import numpy as np
import pytest
from e2e_helpers import ServerThread, array, settings_for, stub_for, tensor

from protos.vae.v1 import vae_pb2
from service.errors import ModelError
from service.server import create_server

Z = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)


def _find(registry, name: str, **labels: str) -> float | None:  # type: ignore[no-untyped-def]
    got = [s.value for fam in registry.collect() for s in fam.samples
           if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())]
    return float(sum(got)) if got else None


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path, tiny_conv_model_dir: Path) -> Path:
    """a/1 = the MLP model, a/2 = the conv model (policy all: both served), b/1 = the conv model."""
    root = tmp_path_factory.mktemp("repository") / "repo"
    shutil.copytree(tiny_model_dir, root / "a" / "1")
    shutil.copytree(tiny_conv_model_dir, root / "a" / "2")
    shutil.copytree(tiny_conv_model_dir, root / "b" / "1")
    (root / "a" / "config.json").write_text(json.dumps({"version_policy": "all"}))
    (root / ".a.1.tmp").mkdir()   # an export in progress elsewhere: ignored
    (root / "a" / "notes").mkdir()  # not an integer: ignored
    return root


def _settings(repo: Path, **kw):  # type: ignore[no-untyped-def]
    return settings_for("", model_repository=str(repo), **kw)


def _decode(stub, model: str = "", version: str = "") -> vae_pb2.DecodeResponse:  # type: ignore[no-untyped-def]
    return stub.Decode(vae_pb2.DecodeRequest(z=tensor(Z), model=model, version=version), timeout=10)


def test_two_models_two_versions_routed_by_name_and_version(repo: Path) -> None:
    from prometheus_client import CollectorRegistry

    reg = CollectorRegistry()
    with ServerThread(_settings(repo), reg) as srv, srv.channel() as ch:
        stub = stub_for(ch)
        a1, a2, b1 = _decode(stub, "a", "1"), _decode(stub, "a", "2"), _decode(stub, "b")
        assert [(r.model, r.version) for r in (a1, a2, b1)] == [("a", "1"), ("a", "2"), ("b", "1")]
        # Different weights answer differently; the same files under another name answer the same.
        assert not np.array_equal(array(a1.images), array(a2.images))
        assert np.array_equal(array(a2.images), array(b1.images))
        # Empty model and version: the default model (first by name), its newest version.
        default = _decode(stub)
        assert (default.model, default.version) == ("a", "2")
        assert np.array_equal(array(default.images), array(a2.images))
        # Every reply carries its producer, streams included.
        enc = stub.Encode(vae_pb2.EncodeRequest(images=tensor(np.zeros((1, 1, 8, 8), np.float32)),
                                                model="a", version="1"), timeout=10)
        assert (enc.model, enc.version) == ("a", "1")
        chunks = list(stub.SampleStream(vae_pb2.SampleRequest(n=5, chunk_size=2, seed=1, model="b"),
                                        timeout=10))
        assert {(c.model, c.version) for c in chunks} == {("b", "1")}
        info = stub.GetModelInfo(vae_pb2.GetModelInfoRequest(model="a", version="1"), timeout=10)
        assert (info.model, info.version, info.latent_dim) == ("a", "1", 4)
        listing = stub.ListModels(vae_pb2.ListModelsRequest(), timeout=10)
        assert listing.default_model == "a"
        assert [(v.model, v.version, v.state, v.latest) for v in listing.versions] == [
            ("a", "1", "ready", False), ("a", "2", "ready", True), ("b", "1", "ready", True)]
        # Metrics carry model and version; each version's latent statistics are its own.
        assert _find(reg, "vae_requests_total", model="a", version="1", method="Decode", code="OK") == 1
        assert _find(reg, "vae_requests_total", model="a", version="2", method="Decode", code="OK") == 2
        assert _find(reg, "vae_requests_total", model="b", version="1", method="Decode", code="OK") == 1
        assert _find(reg, "vae_model_info", model="b", version="1") == 1


@pytest.mark.parametrize(("model", "version", "needle"), [
    ("c", "", "model 'c' is not served"),
    ("a", "3", "model 'a' version '3' is not served"),
    ("b", "x", "model 'b' version 'x' is not served"),
])
def test_unknown_model_or_version_is_not_found_with_what_is_served(repo: Path, model: str, version: str,
                                                                   needle: str) -> None:
    with ServerThread(_settings(repo)) as srv, srv.channel() as ch:
        stub = stub_for(ch)
        for call in (lambda: _decode(stub, model, version),
                     lambda: stub.GetModelInfo(vae_pb2.GetModelInfoRequest(model=model, version=version)),
                     lambda: list(stub.SampleStream(vae_pb2.SampleRequest(n=2, model=model,
                                                                          version=version)))):
            with pytest.raises(grpc.RpcError) as err:
                call()
            assert err.value.code() == grpc.StatusCode.NOT_FOUND
            assert needle in err.value.details()
            assert "served: a versions 1, 2; b versions 1" in err.value.details()


def test_unload_then_load_and_a_corrupt_version_never_serves(repo: Path, tmp_path: Path) -> None:
    from prometheus_client import CollectorRegistry

    local = tmp_path / "repo"
    shutil.copytree(repo, local)
    (local / "a" / "config.json").write_text(json.dumps({"version_policy": "latest"}))
    reg = CollectorRegistry()
    with ServerThread(_settings(local), reg) as srv, srv.channel() as ch:
        stub = stub_for(ch)
        assert _decode(stub, "a").version == "2"
        with pytest.raises(grpc.RpcError) as err:
            _decode(stub, "a", "1")  # latest policy: version 1 is not served
        assert err.value.code() == grpc.StatusCode.NOT_FOUND

        out = stub.UnloadModel(vae_pb2.UnloadModelRequest(model="b"), timeout=30)
        assert [v.state for v in out.versions] in ([], ["draining"], ["unloaded"])
        with pytest.raises(grpc.RpcError) as err:
            _decode(stub, "b")
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        srv.call(srv.server.models.wait_released())  # type: ignore[union-attr]
        assert _find(reg, "vae_model_info", model="b") is None  # its series left with it
        assert "b" not in {v.model for v in stub.ListModels(vae_pb2.ListModelsRequest()).versions}
        # The poller must not bring back an unloaded model; LoadModel does.
        srv.call(srv.server.reload())  # type: ignore[union-attr]
        assert "b" not in {v.model for v in stub.ListModels(vae_pb2.ListModelsRequest()).versions}
        loaded = stub.LoadModel(vae_pb2.LoadModelRequest(model="b"), timeout=60)
        assert [(v.version, v.state) for v in loaded.versions] == [("1", "ready")]
        assert _decode(stub, "b").version == "1"
        # LoadModel of one version beyond the policy serves it too.
        stub.LoadModel(vae_pb2.LoadModelRequest(model="a", version="1"), timeout=60)
        assert _decode(stub, "a", "1").version == "1"
        assert _decode(stub, "a").version == "2"

        # A corrupt version 3 (one flipped byte in the encoder): refused, reported, counted; 2 serves.
        shutil.copytree(local / "a" / "2", local / "a" / ".3.tmp")
        enc = local / "a" / ".3.tmp" / "encoder.onnx"
        data = bytearray(enc.read_bytes())
        data[len(data) // 2] ^= 0xFF
        enc.write_bytes(bytes(data))
        (local / "a" / ".3.tmp").rename(local / "a" / "3")
        srv.call(srv.server.reload(), timeout=60)  # type: ignore[union-attr]
        status = {(v.model, v.version): v for v in stub.ListModels(vae_pb2.ListModelsRequest()).versions}
        assert status[("a", "3")].state == "failed"
        assert "sha256" in status[("a", "3")].reason
        assert status[("a", "2")].state == "ready" and status[("a", "2")].latest
        assert _decode(stub, "a").version == "2"
        assert _find(reg, "vae_model_load_failures_total", model="a", version="3") == 1
        # An unchanged failed folder is not retried on every rescan.
        srv.call(srv.server.reload(), timeout=60)  # type: ignore[union-attr]
        assert _find(reg, "vae_model_load_failures_total", model="a", version="3") == 1

        codes = grpc.StatusCode
        for bad, code in ((vae_pb2.LoadModelRequest(model="zzz"), codes.NOT_FOUND),
                          (vae_pb2.LoadModelRequest(model="a", version="9"), codes.NOT_FOUND),
                          (vae_pb2.LoadModelRequest(model="a", version="x"), codes.INVALID_ARGUMENT),
                          (vae_pb2.LoadModelRequest(), codes.INVALID_ARGUMENT)):
            with pytest.raises(grpc.RpcError) as err:
                stub.LoadModel(bad, timeout=30)
            assert err.value.code() == code, bad
        with pytest.raises(grpc.RpcError) as err:
            stub.UnloadModel(vae_pb2.UnloadModelRequest(model="zzz"), timeout=30)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND and "loaded: a, b" in err.value.details()


def test_polling_picks_up_a_new_version(repo: Path, tmp_path: Path) -> None:
    import time

    local = tmp_path / "repo"
    shutil.copytree(repo, local)
    with ServerThread(_settings(local, poll_seconds=0.2)) as srv, srv.channel() as ch:
        stub = stub_for(ch)
        assert _decode(stub, "b").version == "1"
        shutil.copytree(local / "b" / "1", local / "b" / ".2.tmp")
        (local / "b" / ".2.tmp").rename(local / "b" / "2")
        deadline = time.monotonic() + 60
        while _decode(stub, "b").version != "2" and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _decode(stub, "b").version == "2"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # version 1 drained and released (policy latest)
            if [v.version for v in stub.ListModels(vae_pb2.ListModelsRequest()).versions
                    if v.model == "b"] == ["2"]:
                break
            time.sleep(0.1)
        assert [v.version for v in stub.ListModels(vae_pb2.ListModelsRequest()).versions
                if v.model == "b"] == ["2"]


def test_load_and_unload_need_the_token_when_auth_is_on(repo: Path) -> None:
    with ServerThread(_settings(repo, auth_token="s3cret")) as srv, srv.channel() as ch:
        stub = stub_for(ch)
        for call in (lambda md: stub.UnloadModel(vae_pb2.UnloadModelRequest(model="b"), metadata=md),
                     lambda md: stub.LoadModel(vae_pb2.LoadModelRequest(model="b"), metadata=md)):
            with pytest.raises(grpc.RpcError) as err:
                call(None)
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        ok = stub.UnloadModel(vae_pb2.UnloadModelRequest(model="b"),
                              metadata=(("authorization", "Bearer s3cret"),), timeout=30)
        assert ok.versions is not None


def test_a_repository_with_nothing_servable_refuses_to_start(tmp_path: Path) -> None:
    (tmp_path / "a" / "1").mkdir(parents=True)  # a version folder without a manifest

    async def make() -> None:
        create_server(_settings(tmp_path))

    import asyncio

    with pytest.raises(ModelError, match="no servable model"):
        asyncio.run(make())


def test_serve_cli_refuses_both_model_dir_and_repository(repo: Path, tiny_model_dir: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "vae_cli.main", "serve", "--model-dir", str(tiny_model_dir),
                           "--model-repository", str(repo)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "not both" in proc.stderr and "Traceback" not in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "vae_cli.main", "serve", "--model-repository", str(repo),
                           "--version-policy", "newest"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "not a version policy" in proc.stderr


def test_export_into_a_repository_takes_the_next_version(tiny_run_dir: Path, tiny_model_dir: Path,
                                                         tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(tiny_model_dir, repo / "m" / "1")
    cmd = [sys.executable, "-m", "vae_cli.main", "export", str(tiny_run_dir), "--repository", str(repo)]
    proc = subprocess.run([*cmd, "--name", "m", "-q"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in (repo / "m").iterdir()) == ["1", "2"]  # no staging folder left
    manifest = json.loads((repo / "m" / "2" / "manifest.json").read_text())
    assert manifest["model"]["name"] == "m" and manifest["model"]["version"]  # its own version string
    for extra, needle in ((["--name", "bad name"], "--name 'bad name'"), ([], "needs --name"),
                          (["--name", "m", "--repository-version", "1"], "never overwritten")):
        proc = subprocess.run([*cmd, *extra], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2 and needle in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


def test_open_inference_protocol_sees_every_model_version(repo: Path) -> None:
    from protos.inference import grpc_service_pb2 as pb
    from protos.inference import grpc_service_pb2_grpc as pb_grpc

    with ServerThread(_settings(repo)) as srv, srv.channel() as ch:
        stub, v2 = stub_for(ch), pb_grpc.GRPCInferenceServiceStub(ch)
        index = v2.RepositoryIndex(pb.RepositoryIndexRequest(), timeout=10)
        assert sorted((m.name, m.version, m.state) for m in index.models) == sorted(
            (f"{m}-{g}", v, "READY") for m, v in (("a", "1"), ("a", "2"), ("b", "1"))
            for g in ("encoder", "decoder"))
        for version in ("1", "2", ""):
            req = pb.ModelInferRequest(model_name="a-decoder", model_version=version)
            req.inputs.add(name="z", datatype="FP32", shape=list(Z.shape))
            req.raw_input_contents.append(Z.tobytes())
            reply = v2.ModelInfer(req, timeout=10)
            got = np.frombuffer(reply.raw_output_contents[0], "<f4").reshape(tuple(reply.outputs[0].shape))
            want = _decode(stub, "a", version)
            assert reply.model_version == want.version == (version or "2")
            assert np.array_equal(got, array(want.images))  # the same version's batcher and bytes
        # Unloading both v2 names of b unloads the model b: vae.v1 no longer serves it either.
        v2.RepositoryModelUnload(pb.RepositoryModelUnloadRequest(model_name="b-encoder"), timeout=30)
        assert _decode(stub, "b").version == "1"  # one graph out of v2 service: b still loaded
        v2.RepositoryModelUnload(pb.RepositoryModelUnloadRequest(model_name="b-decoder"), timeout=30)
        with pytest.raises(grpc.RpcError) as err:
            _decode(stub, "b")
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        v2.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="b-decoder"), timeout=60)
        assert _decode(stub, "b").version == "1"
        assert v2.ModelReady(pb.ModelReadyRequest(name="b-decoder"), timeout=10).ready
        assert not v2.ModelReady(pb.ModelReadyRequest(name="b-encoder"), timeout=10).ready
