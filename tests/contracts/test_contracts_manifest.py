"""The manifest schema file, the core's validator for its JSON-Schema subset, and the cross-field
rules: the file is a valid draft 2020-12 schema, and the core agrees with the real `jsonschema`
package on good and bad manifests (synthetic ones and the real exporter's)."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from contracts.errors import JsonError, ManifestError
from contracts.jsonio import loads_json
from contracts.manifest import SCHEMA_PATH, parse_manifest, schema_validator, validate_manifest
from contracts.schema import SchemaValidator

SCHEMA = json.loads(SCHEMA_PATH.read_text())
D = 2


def _tensor(name: str, shape: list[Any]) -> dict[str, Any]:
    return {"name": name, "shape": shape, "dtype": "float32"}


def _graph(file: str, inputs: list[dict[str, Any]], outputs: list[dict[str, Any]]) -> dict[str, Any]:
    return {"file": file, "sha256": "ab" * 32, "size_bytes": 10, "dtype": "float32",
            "inputs": inputs, "outputs": outputs}


def good() -> dict[str, Any]:
    return {
        "format": "vae-model-manifest", "format_version": 1,
        "model": {"name": "vae", "version": "v1", "created_at": "2026-01-01T00:00:00Z"},
        "input_shape": [1, 8, 8], "latent_dim": D, "likelihood": "bernoulli", "opset": 20,
        "graphs": {
            "encoder": _graph("encoder.onnx", [_tensor("x", ["N", 1, 8, 8])],
                              [_tensor("mu", ["N", D]), _tensor("logvar", ["N", D])]),
            "decoder": _graph("decoder.onnx", [_tensor("z", ["N", D])], [_tensor("x_mean", ["N", 1, 8, 8])]),
        },
        "verification": {"tolerance": 1e-4, "batches": [1, 7], "max_abs_diff": {}},
        "producer": {}, "checkpoint": {"sha256": "cd" * 32},
        "training_data": {"fingerprint": "ef" * 32, "n_images": 9},
        "reference": {"n_images": 9, "mu_mean": [0.0, 0.1], "mu_var": [1.0, 1],
                      "posterior_var_mean": [0.1, 0.2],
                      "kl_per_dim": [1.0, 2.0], "active_units": 2, "active_threshold": 0.01,
                      "kl_per_sample": {"mean": 3.0, "p50": 3, "p90": 4.0, "p99": 5.0}},
        "future_key": {"readers": "ignore it"},
    }


def _set(path: str, value: Any) -> dict[str, Any]:
    m = good()
    *parents, last = path.split(".")
    node: Any = m
    for p in parents:
        node = node[int(p)] if isinstance(node, list) else node[p]
    if value is KeyError:
        del node[last]
    elif isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value
    return m


# (document, a phrase of the core's first problem)
BAD: list[tuple[str, dict[str, Any] | list[Any], str]] = [
    ("missing-model", _set("model", KeyError), "model: missing (required key 'model')"),
    ("empty-name", _set("model.name", ""), "model.name: '' is shorter than 1"),
    ("latent-zero", _set("latent_dim", 0), "latent_dim: 0 is below the minimum 1"),
    ("latent-bool", _set("latent_dim", True), "latent_dim: True is not an integer"),
    ("latent-float", _set("latent_dim", 2.5), "latent_dim: 2.5 is not an integer"),
    ("shape-short", _set("input_shape", [8, 8]), "input_shape: [8, 8] has 2 items, fewer than 3"),
    ("shape-long", _set("input_shape", [1, 8, 8, 1]), "has 4 items, more than 3"),
    ("shape-negative", _set("input_shape", [1, -8, 8]), "input_shape[1]: -8 is below the minimum 1"),
    ("graphs-list", _set("graphs", ["encoder.onnx"]), "graphs: ['encoder.onnx'] is not an object"),
    ("no-decoder", _set("graphs.decoder", KeyError), "graphs.decoder: missing"),
    ("extra-graph", _set("graphs.encoder_int8", {}), "graphs.encoder_int8: not allowed here"),
    ("file-traversal", _set("graphs.encoder.file", "../x.onnx"), "is not a plain file name"),
    ("file-hidden", _set("graphs.encoder.file", ".x.onnx"), "is not a plain file name"),
    ("sha-short", _set("graphs.encoder.sha256", "abc"), "is not a sha256 hex digest"),
    ("size-zero", _set("graphs.decoder.size_bytes", 0), "graphs.decoder.size_bytes: 0 is below"),
    ("size-string", _set("graphs.decoder.size_bytes", "big"), "'big' is not an integer"),
    ("dtype", _set("graphs.decoder.dtype", "int8"), "is not one of ['float32', 'float16']"),
    ("inputs-empty", _set("graphs.decoder.inputs", []), "graphs.decoder.inputs: [] has 0 items"),
    ("inputs-dict", _set("graphs.encoder.inputs", {"x": 1}), "{'x': 1} is not an array"),
    ("axis-m", _set("graphs.decoder.inputs.0.shape", ["M", D]), "matches none of the allowed forms"),
    ("tolerance", _set("verification.tolerance", "tight"), "verification.tolerance"),
    ("no-checkpoint", _set("checkpoint", KeyError), "checkpoint: missing"),
    ("ref-list", _set("reference.mu_mean", "not a list"), "reference.mu_mean: 'not a list' is not an array"),
    ("ref-quantiles", _set("reference.kl_per_sample", {"mean": 1.0}), "reference.kl_per_sample.p50: missing"),
    ("ref-nan-string", _set("reference.kl_per_dim", [1.0, "NaN"]), "reference.kl_per_dim[1]"),
]


@pytest.fixture(scope="module")
def reference_validator() -> jsonschema.Draft202012Validator:
    jsonschema.Draft202012Validator.check_schema(SCHEMA)  # the file is a valid schema
    return jsonschema.Draft202012Validator(SCHEMA)


def test_schema_file_is_valid_and_fully_understood(
        reference_validator: jsonschema.Draft202012Validator) -> None:
    assert schema_validator().schema == SCHEMA
    with pytest.raises(ValueError, match="unsupported keywords \\['oneOf'\\]"):
        SchemaValidator({"properties": {"a": {"oneOf": []}}})
    with pytest.raises(ValueError, match="not a local"):
        SchemaValidator({"$ref": "http://elsewhere"})


def test_good_manifests_agree(reference_validator: jsonschema.Draft202012Validator,
                              tiny_model_dir: Path) -> None:
    real = json.loads((tiny_model_dir / "manifest.json").read_text())
    for doc in (good(), real):
        assert reference_validator.is_valid(doc)
        assert schema_validator().problems(doc) == [] and validate_manifest(doc) == []
    typed = parse_manifest((tiny_model_dir / "manifest.json").read_bytes())
    assert typed.latent_dim == real["latent_dim"] and typed.graphs["decoder"].inputs[0].name == "z"
    assert typed.graphs["encoder"].size_bytes == (tiny_model_dir / "encoder.onnx").stat().st_size


@pytest.mark.parametrize("case, doc, phrase", BAD, ids=[b[0] for b in BAD])
def test_bad_manifests_agree(reference_validator: jsonschema.Draft202012Validator, case: str,
                             doc: dict[str, Any], phrase: str) -> None:
    assert not reference_validator.is_valid(doc)
    problems = schema_validator().problems(doc)
    assert problems and phrase in problems[0], problems
    assert validate_manifest(doc) == problems


def test_cross_field_rules() -> None:
    m = _set("latent_dim", 3)
    problems = validate_manifest(m)
    assert "graphs.encoder.outputs: graph latent shapes do not match latent_dim 3" in problems[0]
    assert "reference.mu_mean: 2 entries, latent_dim is 3" in problems
    renamed = _set("graphs.encoder.outputs.0.name", "mean")
    assert validate_manifest(renamed)[0].startswith("graphs.encoder.outputs: tensors ['mean', 'logvar']")
    small = _set("input_shape", [1, 4, 4])
    assert "graph image shapes do not match input_shape [1, 4, 4]" in validate_manifest(small)[0]
    mixed = copy.deepcopy(good())
    mixed["graphs"]["decoder"]["inputs"][0]["dtype"] = "float16"
    assert validate_manifest(mixed) == ["graphs.decoder.inputs: z dtype 'float16' differs from the graph's "
                                        "'float32'"]
    assert validate_manifest([]) == ["not a VAE model manifest (format must be 'vae-model-manifest')"]
    assert "format_version 2 is not supported" in validate_manifest(_set("format_version", 2))[0]
    with pytest.raises(ManifestError) as info:
        parse_manifest(m)
    assert info.value.problems == problems


@pytest.mark.parametrize("text, phrase", [
    ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
    ('{"a": ' + "[" * 100_000 + "]" * 100_000 + "}", "nested too deeply"),
    ("1" * 4301, "4300 digits"),
    ("", "Expecting value"),
    (b"{\"a\": \"\x80\"}", "not UTF-8"),
])
def test_json_that_cannot_be_read(text: str | bytes, phrase: str) -> None:
    with pytest.raises(JsonError, match="^not valid JSON") as info:
        loads_json(text)
    assert phrase in str(info.value) and "\n" not in str(info.value)
