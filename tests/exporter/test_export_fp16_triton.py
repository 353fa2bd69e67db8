"""--fp16 graphs (verified against fp32 at the documented looser tolerance) and --triton repositories
(config.pbtxt parsed as protobuf text format and checked against the graphs)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from google.protobuf import text_format

from exporter.errors import OutputExistsError
from exporter.export import export_model
from exporter.graphs import read_metadata
from exporter.triton import parse_config
from exporter.validate import FP16_TOLERANCE, verify_model_dir
from trainer.checkpoint import load_checkpoint, model_from_checkpoint, resolve_checkpoint

Export = tuple[Path, Path, dict[str, Any]]
_ELEM = {onnx.TensorProto.FLOAT: ("float32", "TYPE_FP32"), onnx.TensorProto.FLOAT16: ("float16", "TYPE_FP16")}


def test_fp16_manifest_and_graphs(fp16_triton_export: Export) -> None:
    model_dir, _, m = fp16_triton_export
    # decoder_params (Score) is float32 only: there is no decoder_params_fp16.
    assert set(m["graphs"]) == {"encoder", "decoder", "encoder_fp16", "decoder_fp16", "decoder_params"}
    assert m["verification"]["fp16_tolerance"] == FP16_TOLERANCE
    for key in ("encoder_fp16", "decoder_fp16"):
        g = m["graphs"][key]
        assert g["dtype"] == "float16" and g["file"] == f"{key}.onnx"
        assert all(t["dtype"] == "float16" for t in g["inputs"] + g["outputs"])
        proto = onnx.load(str(model_dir / g["file"]))
        onnx.checker.check_model(proto, full_check=True)
        for v in (*proto.graph.input, *proto.graph.output):
            assert v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
        meta = read_metadata(proto)
        assert meta["vae.dtype"] == "float16" and meta["vae.graph"] == key.removesuffix("_fp16")
    for out in ("encoder_fp16.mu", "encoder_fp16.logvar", "decoder_fp16.x_mean"):
        assert 0 < m["verification"]["max_abs_diff"][out] <= FP16_TOLERANCE["atol"] * 10


def test_fp16_graphs_match_fp32_torch(fp16_triton_export: Export, tiny_run_dir: Path) -> None:
    model_dir, _, m = fp16_triton_export
    model = model_from_checkpoint(load_checkpoint(resolve_checkpoint(tiny_run_dir)))
    rng = np.random.default_rng(5)
    x = rng.random((300, 1, 8, 8)).astype(np.float16)
    z = rng.standard_normal((300, 4)).astype(np.float16)
    enc = ort.InferenceSession(str(model_dir / "encoder_fp16.onnx"), providers=["CPUExecutionProvider"])
    dec = ort.InferenceSession(str(model_dir / "decoder_fp16.onnx"), providers=["CPUExecutionProvider"])
    mu, logvar = enc.run(None, {"x": x})
    (x_mean,) = dec.run(None, {"z": z})
    assert mu.dtype == logvar.dtype == x_mean.dtype == np.float16
    with torch.no_grad():
        t_mu, t_logvar = model.encode(torch.from_numpy(x.astype(np.float32)))
        t_mean = model.decode_mean(torch.from_numpy(z.astype(np.float32)))
    tol = FP16_TOLERANCE
    for got, want in ((mu, t_mu), (logvar, t_logvar), (x_mean, t_mean)):
        np.testing.assert_allclose(got.astype(np.float32), want.numpy(), atol=tol["atol"], rtol=tol["rtol"])
    assert verify_model_dir(model_dir, tiny_run_dir) == []


def test_triton_repository(fp16_triton_export: Export) -> None:
    model_dir, repo, m = fp16_triton_export
    assert sorted(p.name for p in repo.iterdir()) == ["vae_decoder", "vae_encoder"]
    for graph in ("encoder", "decoder"):
        folder = repo / f"vae_{graph}"
        assert sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) == \
            ["1", "1/model.onnx", "config.pbtxt"]
        assert (folder / "1" / "model.onnx").read_bytes() == (model_dir / f"{graph}.onnx").read_bytes()
        cfg: Any = parse_config((folder / "config.pbtxt").read_text())
        assert cfg.name == folder.name
        assert cfg.platform == "onnxruntime_onnx"
        assert cfg.max_batch_size >= 256
        assert cfg.HasField("dynamic_batching")
        assert all(0 < b <= cfg.max_batch_size for b in cfg.dynamic_batching.preferred_batch_size)
        assert cfg.dynamic_batching.max_queue_delay_microseconds > 0
        proto = onnx.load(str(folder / "1" / "model.onnx"))
        dtype_enum = cfg.DESCRIPTOR.fields_by_name["input"].message_type.fields_by_name["data_type"].enum_type
        for specs, values in ((cfg.input, proto.graph.input), (cfg.output, proto.graph.output)):
            assert [s.name for s in specs] == [v.name for v in values]
            for spec, v in zip(specs, values, strict=True):
                dims = [d.dim_value for d in v.type.tensor_type.shape.dim]
                # Triton's dims leave out the batch axis (max_batch_size > 0).
                assert list(spec.dims) == dims[1:]
                want_type = _ELEM[v.type.tensor_type.elem_type][1]
                assert dtype_enum.values_by_number[spec.data_type].name == want_type
        assert [s.name for s in cfg.input] == [t["name"] for t in m["graphs"][graph]["inputs"]]


def test_triton_config_parse_is_strict() -> None:
    with pytest.raises(text_format.ParseError):
        parse_config('name: "m"\nmax_batch: 4\n')
    with pytest.raises(text_format.ParseError):
        parse_config('name: "m"\ninput { name: "x" data_type: TYPE_FLOAT32 dims: 3 }\n')


def test_triton_refuses_another_model(fp16_triton_export: Export, tiny_conv_run_dir: Path,
                                      tmp_path: Path) -> None:
    _, repo, _ = fp16_triton_export
    before = (repo / "vae_encoder" / "1" / "model.onnx").read_bytes()
    with pytest.raises(OutputExistsError, match="holds model version"):
        export_model(tiny_conv_run_dir, tmp_path / "model", triton_dir=repo)
    assert not (tmp_path / "model").exists()
    assert (repo / "vae_encoder" / "1" / "model.onnx").read_bytes() == before
