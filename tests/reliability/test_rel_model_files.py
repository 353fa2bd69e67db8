"""Damaged model folders: truncated ONNX, sha256 mismatch, manifest fields missing or of the wrong type,
latent-dim mismatch between the graphs. `vae serve` refuses to start: exit 2, one clear line on stderr,
no traceback, no port served."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from rel_helpers import ROOT, child_env

from service.cli import serve_main


def _manifest(d: Path) -> dict[str, Any]:
    return json.loads((d / "manifest.json").read_text())


def _write_manifest(d: Path, m: dict[str, Any]) -> None:
    (d / "manifest.json").write_text(json.dumps(m, indent=2))


def _record(d: Path, key: str) -> None:
    """Re-record a graph's size and sha256 after replacing its file (a consistent but wrong folder)."""
    m = _manifest(d)
    data = (d / m["graphs"][key]["file"]).read_bytes()
    m["graphs"][key].update(size_bytes=len(data), sha256=hashlib.sha256(data).hexdigest())
    _write_manifest(d, m)


def _drop(path: str) -> Callable[[Path], None]:
    def damage(d: Path) -> None:
        m = _manifest(d)
        *parents, last = path.split(".")
        node = m
        for p in parents:
            node = node[p]
        del node[last]
        _write_manifest(d, m)

    return damage


def _set(path: str, value: Any) -> Callable[[Path], None]:
    def damage(d: Path) -> None:
        m = _manifest(d)
        *parents, last = path.split(".")
        node = m
        for p in parents:
            node = node[p]
        node[last] = value
        _write_manifest(d, m)

    return damage


def _truncate(d: Path) -> None:
    f = d / "encoder.onnx"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])


def _truncate_and_record(d: Path) -> None:
    _truncate(d)
    _record(d, "encoder")


def _flip_byte(d: Path) -> None:
    f = d / "decoder.onnx"
    data = bytearray(f.read_bytes())
    data[-10] ^= 0x01
    f.write_bytes(bytes(data))


def _swap_graphs(d: Path) -> None:
    (d / "encoder.onnx").rename(d / "tmp.onnx")
    (d / "decoder.onnx").rename(d / "encoder.onnx")
    (d / "tmp.onnx").rename(d / "decoder.onnx")


def _decoder_with_latent_dim(path: Path, dim: int) -> None:
    """A real, valid decoder graph of another latent size: z [N, dim] -> sigmoid(z W) -> [N, 1, 8, 8]."""
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((dim, 64)).astype(np.float32), "w")
    shape = numpy_helper.from_array(np.array([-1, 1, 8, 8], dtype=np.int64), "shape")
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["z", "w"], ["h"]),
            helper.make_node("Sigmoid", ["h"], ["s"]),
            helper.make_node("Reshape", ["s", "shape"], ["x_mean"]),
        ],
        "decoder",
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", dim])],
        [helper.make_tensor_value_info("x_mean", TensorProto.FLOAT, ["N", 1, 8, 8])],
        [w, shape],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    model.ir_version = 10  # what the installed onnxruntime reads
    onnx.save(model, path)


def _latent_mismatch_recorded(d: Path) -> None:
    """decoder.onnx takes 5 latents, and the manifest says so for the decoder; the encoder gives 4."""
    _decoder_with_latent_dim(d / "decoder.onnx", 5)
    m = _manifest(d)
    m["graphs"]["decoder"]["inputs"][0]["shape"] = ["N", 5]
    _write_manifest(d, m)
    _record(d, "decoder")


def _latent_mismatch_hidden(d: Path) -> None:
    """decoder.onnx takes 5 latents but the manifest still records 4 (sha re-recorded)."""
    _decoder_with_latent_dim(d / "decoder.onnx", 5)
    _record(d, "decoder")


def _manifest_is_folder(d: Path) -> None:
    (d / "manifest.json").unlink()
    (d / "manifest.json").mkdir()


# (case, damage, a phrase the one-line message must contain)
CASES: list[tuple[str, Callable[[Path], None], str]] = [
    ("truncated-onnx", _truncate, "truncated"),
    ("truncated-onnx-rerecorded", _truncate_and_record, "cannot load"),
    ("sha256-mismatch", _flip_byte, "sha256"),
    ("graphs-swapped", _swap_graphs, "replaced"),
    ("latent-dim-mismatch-between-graphs", _latent_mismatch_recorded, "latent"),
    ("latent-dim-mismatch-unrecorded", _latent_mismatch_hidden, "does not match"),
    ("manifest-latent-dim-wrong", _set("latent_dim", 5), "latent"),
    ("missing-format", _drop("format"), "format"),
    ("missing-format-version", _drop("format_version"), "format_version"),
    ("missing-model", _drop("model"), "'model'"),
    ("missing-model-name", _drop("model.name"), "'name'"),
    ("missing-input-shape", _drop("input_shape"), "input_shape"),
    ("missing-latent-dim", _drop("latent_dim"), "latent_dim"),
    ("missing-graphs", _drop("graphs"), "'graphs'"),
    ("missing-decoder", _drop("graphs.decoder"), "'decoder'"),
    ("missing-encoder-sha256", _drop("graphs.encoder.sha256"), "sha256"),
    ("missing-encoder-size", _drop("graphs.encoder.size_bytes"), "size_bytes"),
    ("missing-decoder-file", _drop("graphs.decoder.file"), "'file'"),
    ("missing-encoder-inputs", _drop("graphs.encoder.inputs"), "inputs"),
    ("size-not-a-number", _set("graphs.encoder.size_bytes", "big"), "size_bytes"),
    ("sha-not-a-string", _set("graphs.encoder.sha256", 12), "sha256"),
    ("latent-dim-a-string", _set("latent_dim", "4"), "latent_dim"),
    ("input-shape-negative", _set("input_shape", [1, -8, 8]), "input_shape"),
    ("inputs-not-a-list", _set("graphs.encoder.inputs", {"x": 1}), "inputs"),
    ("graphs-a-list", _set("graphs", ["encoder.onnx"]), "graphs"),
    ("path-traversal", _set("graphs.encoder.file", "../encoder.onnx"), "plain file name"),
    ("unknown-version", _set("format_version", 99), "format_version"),
    ("manifest-a-list", lambda d: (d / "manifest.json").write_text("[]"), "not a VAE model manifest"),
    ("manifest-empty", lambda d: (d / "manifest.json").write_text(""), "not valid JSON"),
    ("manifest-a-folder", _manifest_is_folder, "manifest.json"),
    ("encoder-missing", lambda d: (d / "encoder.onnx").unlink(), "missing"),
]


@pytest.fixture()
def model_copy(tiny_model_dir: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "model"
    shutil.copytree(tiny_model_dir, dst)
    return dst


@pytest.mark.parametrize("case, damage, phrase", CASES, ids=[c[0] for c in CASES])
def test_damaged_model_refused(
    model_copy: Path,
    case: str,
    damage: Callable[[Path], None],
    phrase: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    damage(model_copy)
    rc = serve_main(
        [
            "--model-dir",
            str(model_copy),
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--metrics-port",
            "0",
            "--log-level",
            "ERROR",
        ]
    )
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert err.startswith("vae serve: refusing to start:") and "\n" not in err, err
    assert phrase in err, err


def test_refusal_as_a_real_process(model_copy: Path) -> None:
    """The same through `vae serve` in its own process: exit 2, one line, no traceback."""
    _latent_mismatch_recorded(model_copy)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "vae_cli.main",
            "serve",
            "--model-dir",
            str(model_copy),
            "--port",
            "0",
            "--metrics-port",
            "0",
        ],
        env=child_env(),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "latent shapes do not match" in proc.stderr


def test_unknown_manifest_keys_still_serve(model_copy: Path) -> None:
    """Readers ignore keys they do not know (CONTRACTS.md): an additive key must not stop the service."""
    import asyncio

    from service.server import create_server
    from service.settings import Settings

    m = _manifest(model_copy)
    m["future_key"] = {"x": 1}
    m["graphs"]["encoder"]["future_key"] = [1, 2]
    _write_manifest(model_copy, m)

    async def start_stop() -> int:
        server, port = create_server(
            Settings(model_dir=str(model_copy), host="127.0.0.1", port=0, metrics_port=0)
        )
        await server.start()
        await server.stop(0)
        return port

    assert asyncio.run(start_stop()) > 0


def test_garbage_reference_block_refused_cleanly(
    model_copy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _set("reference", {"mu_mean": "not a list", "kl_per_dim": [1.0], "active_units": "many"})(model_copy)
    rc = serve_main(
        [
            "--model-dir",
            str(model_copy),
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--metrics-port",
            "0",
            "--log-level",
            "ERROR",
        ]
    )
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "reference" in err and "\n" not in err, err


def test_inconsistent_limits_refused(tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A default SampleStream chunk above max_sample_n would fail every default stream: refused at start."""
    rc = serve_main(
        ["--model-dir", str(tiny_model_dir), "--port", "0", "--metrics-port", "0", "--max-sample-n", "100"]
    )
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "--default-chunk-size" in err and "\n" not in err, err
