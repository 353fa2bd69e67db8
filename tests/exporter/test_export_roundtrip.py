"""Round trips: checkpoint -> ONNX -> onnxruntime reproduces torch, for both architectures, every
likelihood, and any batch size."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from exporter.export import export_model
from exporter.graphs import OPSET
from exporter.manifest import read_manifest
from exporter.validate import verify_model_dir
from trainer.checkpoint import load_checkpoint, model_from_checkpoint, resolve_checkpoint


def _session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _assert_parity(model_dir: Path, run_dir: Path, batches: tuple[int, ...] = (1, 7, 300)) -> None:
    model = model_from_checkpoint(load_checkpoint(resolve_checkpoint(run_dir)))
    m = read_manifest(model_dir)
    enc = _session(model_dir / "encoder.onnx")
    dec = _session(model_dir / "decoder.onnx")
    rng = np.random.default_rng(3)
    for n in batches:
        x = rng.random((n, *m["input_shape"]), dtype=np.float32)
        z = rng.standard_normal((n, m["latent_dim"]), dtype=np.float32) * 2
        mu, logvar = enc.run(["mu", "logvar"], {"x": x})
        (x_mean,) = dec.run(["x_mean"], {"z": z})
        with torch.no_grad():
            t_mu, t_logvar = model.encode(torch.from_numpy(x))
            t_mean = model.decode_mean(torch.from_numpy(z))
            via_likelihood = model.likelihood.mean(model.decode(torch.from_numpy(z)))
        assert mu.shape == logvar.shape == (n, m["latent_dim"])
        assert x_mean.shape == (n, *m["input_shape"])
        assert np.abs(mu - t_mu.numpy()).max() <= 1e-4
        assert np.abs(logvar - t_logvar.numpy()).max() <= 1e-4
        assert np.abs(x_mean - t_mean.numpy()).max() <= 1e-4
        # The decoder outputs the likelihood's mean image, in [0, 1].
        assert np.abs(x_mean - via_likelihood.numpy()).max() <= 1e-4
        assert x_mean.min() >= 0.0 and x_mean.max() <= 1.0


@pytest.mark.parametrize("which", ["mlp", "conv"])
def test_round_trip_architectures(which: str, request: pytest.FixtureRequest) -> None:
    run_dir = request.getfixturevalue("tiny_run_dir" if which == "mlp" else "tiny_conv_run_dir")
    model_dir = request.getfixturevalue("tiny_model_dir" if which == "mlp" else "tiny_conv_model_dir")
    names = sorted(p.name for p in model_dir.iterdir())
    assert names == ["decoder.onnx", "decoder_params.onnx", "encoder.onnx", "manifest.json"]
    _assert_parity(model_dir, run_dir)
    assert verify_model_dir(model_dir, resolve_checkpoint(run_dir)) == []


@pytest.mark.parametrize("which", ["tiny_model_dir", "tiny_conv_model_dir"])
def test_graphs_are_self_contained_checked_and_dynamic(which: str, request: pytest.FixtureRequest) -> None:
    model_dir = request.getfixturevalue(which)
    m = read_manifest(model_dir)
    for graph in ("encoder", "decoder"):
        proto = onnx.load(str(model_dir / f"{graph}.onnx"), load_external_data=False)
        onnx.checker.check_model(proto, full_check=True)
        assert not any(t.data_location == onnx.TensorProto.EXTERNAL for t in proto.graph.initializer)
        assert {o.domain: o.version for o in proto.opset_import}.get("") == OPSET == m["opset"]
        for value in (*proto.graph.input, *proto.graph.output):
            dims = value.type.tensor_type.shape.dim
            assert dims[0].dim_param == "N"  # dynamic batch ...
            assert all(d.dim_value > 0 for d in dims[1:])  # ... static everything else
    assert not list(model_dir.parent.glob(".*.tmp"))  # no staging folder left behind


@pytest.mark.parametrize(("arch", "likelihood"), [("mlp", "gaussian"), ("conv", "gaussian_learned"),
                                                  ("mlp", "continuous_bernoulli"), ("conv", "bernoulli")])
def test_round_trip_likelihoods(arch: str, likelihood: str, tmp_path: Path,
                                train_tiny: Callable[..., Path]) -> None:
    run_dir = train_tiny(tmp_path / "run", arch=arch, likelihood=likelihood)
    m = export_model(run_dir, tmp_path / "model")
    assert m["likelihood"] == likelihood
    assert all(v <= 1e-4 for v in m["verification"]["max_abs_diff"].values())
    _assert_parity(tmp_path / "model", run_dir, batches=(1, 300))
    assert verify_model_dir(tmp_path / "model", run_dir) == []


def test_round_trip_colour_odd_size_residual(tmp_path: Path, train_tiny: Callable[..., Path]) -> None:
    """3 channels, odd non-square size, residual blocks and a dense layer: static C, H, W survive."""
    images = np.random.default_rng(0).random((96, 3, 7, 5), dtype=np.float32)
    np.save(tmp_path / "images.npy", images)
    run_dir = train_tiny(tmp_path / "run", arch="conv", data=str(tmp_path / "images.npy"),
                         input_shape=(3, 7, 5), res_blocks=1, dense=16)
    m = export_model(run_dir, tmp_path / "model")
    assert m["input_shape"] == [3, 7, 5]
    assert m["graphs"]["decoder"]["outputs"][0]["shape"] == ["N", 3, 7, 5]
    _assert_parity(tmp_path / "model", run_dir, batches=(1, 300))
