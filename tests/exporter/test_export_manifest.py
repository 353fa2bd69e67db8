"""manifest.json: schema, reference statistics (recomputed here independently) and metadata_props."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from exporter.graphs import read_metadata
from exporter.manifest import FORMAT, FORMAT_VERSION, read_manifest, sha256_file, validate_manifest
from trainer.checkpoint import load_checkpoint, model_from_checkpoint
from trainer.config import TrainConfig
from trainer.data import fingerprint, training_images


def test_manifest_schema(tiny_model_dir: Path, tiny_checkpoint: Path) -> None:
    m = read_manifest(tiny_model_dir)
    assert validate_manifest(m) == []
    assert (m["format"], m["format_version"]) == (FORMAT, FORMAT_VERSION)
    assert m["model"]["name"] == "vae"
    assert m["model"]["version"] == sha256_file(tiny_checkpoint)[:12]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", m["model"]["created_at"])
    assert m["input_shape"] == [1, 8, 8] and m["latent_dim"] == 4 and m["likelihood"] == "bernoulli"
    assert set(m["graphs"]) == {"encoder", "decoder", "decoder_params"}
    enc, dec, par = m["graphs"]["encoder"], m["graphs"]["decoder"], m["graphs"]["decoder_params"]
    assert enc["inputs"] == [{"name": "x", "shape": ["N", 1, 8, 8], "dtype": "float32"}]
    assert enc["outputs"] == [{"name": "mu", "shape": ["N", 4], "dtype": "float32"},
                              {"name": "logvar", "shape": ["N", 4], "dtype": "float32"}]
    assert dec["inputs"] == [{"name": "z", "shape": ["N", 4], "dtype": "float32"}]
    assert dec["outputs"] == [{"name": "x_mean", "shape": ["N", 1, 8, 8], "dtype": "float32"}]
    # Score's graph: z -> the likelihood's raw parameters (Bernoulli logits), float32 only.
    assert par["inputs"] == dec["inputs"]
    assert par["outputs"] == [{"name": "params", "shape": ["N", 1, 8, 8], "dtype": "float32"}]
    assert m["likelihood_params"] == {}
    assert set(m["reference"]["elbo_per_sample"]) == {"mean", "p01", "p05", "p50", "p95", "p99"}
    for g in (enc, dec, par):
        path = tiny_model_dir / g["file"]
        assert g["sha256"] == sha256_file(path) and g["size_bytes"] == path.stat().st_size
    ver = m["verification"]
    assert ver["tolerance"] == 1e-4 and ver["batches"] == [1, 7, 256]
    assert set(ver["max_abs_diff"]) == {"encoder.mu", "encoder.logvar", "decoder.x_mean",
                                        "decoder_params.params"}
    assert all(0 <= v <= 1e-4 for v in ver["max_abs_diff"].values())
    assert set(m["producer"]) >= {"exporter", "torch", "onnx", "onnxruntime"}
    assert m["producer"]["torch"] == torch.__version__ and m["producer"]["onnx"] == onnx.__version__
    ckpt = load_checkpoint(tiny_checkpoint)
    assert m["checkpoint"]["sha256"] == sha256_file(tiny_checkpoint)
    assert (m["checkpoint"]["step"], m["checkpoint"]["epoch"]) == (ckpt["step"], ckpt["epoch"])
    assert m["training_data"]["fingerprint"] == ckpt["data"]["fingerprint"]
    assert m["training_data"]["n_images"] == ckpt["data"]["n_train"] == m["reference"]["n_images"]
    assert m["training_data"]["source"] == "digits" and m["training_data"]["override"] is False
    # The file itself is plain JSON that round-trips.
    assert json.loads((tiny_model_dir / "manifest.json").read_text()) == m


def test_reference_statistics_match_direct_computation(tiny_model_dir: Path, tiny_checkpoint: Path) -> None:
    ckpt = load_checkpoint(tiny_checkpoint)
    model = model_from_checkpoint(ckpt)
    images = training_images(TrainConfig.from_dict(ckpt["train_config"]))
    assert fingerprint(images) == ckpt["data"]["fingerprint"]
    with torch.no_grad():
        mu, logvar = (t.double() for t in model.encode(torch.from_numpy(images)))
    var = logvar.exp()
    kl = 0.5 * (mu.pow(2) + var - logvar - 1)  # KL(N(mu, var) || N(0, 1)) per dimension
    kl_sample = kl.sum(1)
    mu_var = mu.var(0, unbiased=False)
    ref = read_manifest(tiny_model_dir)["reference"]

    def close(a: object, b: torch.Tensor) -> None:
        np.testing.assert_allclose(np.asarray(a), b.numpy(), rtol=1e-5, atol=1e-6)

    assert ref["n_images"] == len(images)
    close(ref["mu_mean"], mu.mean(0))
    close(ref["mu_var"], mu_var)
    close(ref["posterior_var_mean"], var.mean(0))
    close(ref["kl_per_dim"], kl.mean(0))
    assert ref["active_threshold"] == 0.01
    assert ref["active_units"] == int((mu_var > 0.01).sum())
    q = torch.quantile(kl_sample, torch.tensor([0.5, 0.9, 0.99], dtype=torch.float64))
    close([ref["kl_per_sample"][k] for k in ("p50", "p90", "p99")], q)
    close(ref["kl_per_sample"]["mean"], kl_sample.mean())
    # Consistency the service relies on: total KL = sum of per-dimension KL.
    assert sum(ref["kl_per_dim"]) == pytest.approx(ref["kl_per_sample"]["mean"], rel=1e-9)


@pytest.mark.parametrize("graph", ["encoder", "decoder"])
def test_metadata_props(tiny_model_dir: Path, graph: str) -> None:
    m = read_manifest(tiny_model_dir)
    meta = read_metadata(onnx.load(str(tiny_model_dir / f"{graph}.onnx")))
    assert meta["vae.graph"] == graph
    assert meta["vae.latent_dim"] == "4"
    assert json.loads(meta["vae.input_shape"]) == [1, 8, 8]
    assert meta["vae.model_name"] == m["model"]["name"]
    assert meta["vae.model_version"] == m["model"]["version"]
    assert meta["vae.likelihood"] == "bernoulli"
    assert meta["vae.dtype"] == "float32"


def _broken(m: dict, path: str, value: object) -> dict:
    out = copy.deepcopy(m)
    *parents, last = path.split(".")
    node = out
    for p in parents:
        node = node[p]
    if value is KeyError:
        del node[last]
    else:
        node[last] = value
    return out


@pytest.mark.parametrize(("path", "value", "expect"), [
    ("format", "something-else", "format"),
    ("format_version", 2, "format_version"),
    ("latent_dim", 0, "latent_dim"),
    ("input_shape", [8, 8], "input_shape"),
    ("graphs.decoder", KeyError, "graphs.decoder: missing"),
    ("graphs.encoder.sha256", "abc", "sha256"),
    ("graphs.encoder.file", "../x.onnx", "plain file name"),
    ("reference.mu_var", [1.0], "reference.mu_var: 1 entries"),
    ("reference.kl_per_sample", {"mean": 1.0}, "kl_per_sample"),
    ("reference.active_units", KeyError, "active_units"),
    ("checkpoint", KeyError, "checkpoint"),
])
def test_schema_validation_rejects(tiny_model_dir: Path, path: str, value: object, expect: str) -> None:
    problems = validate_manifest(_broken(read_manifest(tiny_model_dir), path, value))
    assert problems and any(expect in p for p in problems), problems
