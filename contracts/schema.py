"""A validator for the small subset of JSON Schema (draft 2020-12) that manifest.schema.json uses.

Supported keywords: type, required, properties, additionalProperties (true/false), items, minItems,
maxItems, minimum, minLength, pattern, enum, const, anyOf and local $ref ("#/$defs/..."); annotations
($schema, $id, title, description) are read, and description words a failed pattern. Any other keyword
is refused when the schema is loaded, so the file cannot use a rule this validator would skip. Where
the subset differs from the standard it is stricter: 1.0 is not an integer. tests/contracts checks it
against the `jsonschema` package on good and bad manifests."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

__all__ = ["SchemaValidator", "load_schema", "SUPPORTED_KEYWORDS"]

_ANNOTATIONS = {"$schema", "$id", "title", "description", "$defs"}
SUPPORTED_KEYWORDS = frozenset({
    "type", "required", "properties", "additionalProperties", "items", "minItems", "maxItems",
    "minimum", "minLength", "pattern", "enum", "const", "anyOf", "$ref",
}) | _ANNOTATIONS
_ARTICLE = {"object": "an object", "array": "an array", "string": "a string", "integer": "an integer",
            "number": "a number", "boolean": "a boolean", "null": "null"}


def _is_type(value: Any, kind: str) -> bool:
    if kind == "object":
        return isinstance(value, dict)
    if kind == "array":
        return isinstance(value, list)
    if kind == "string":
        return isinstance(value, str)
    if kind == "boolean":
        return isinstance(value, bool)
    if kind == "null":
        return value is None
    if isinstance(value, bool):  # JSON true is not the number 1
        return False
    return isinstance(value, int) if kind == "integer" else isinstance(value, int | float)


def _json_equal(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    return bool(a == b)


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _child(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


class SchemaValidator:
    """Validates documents against one loaded schema; `problems(doc)` lists every departure."""

    def __init__(self, schema: Mapping[str, Any]) -> None:
        self.schema = dict(schema)
        self._defs: dict[str, Any] = dict(self.schema.get("$defs", {}))
        self._check_keywords(self.schema, "#")

    def _check_keywords(self, node: Any, where: str) -> None:
        if not isinstance(node, dict):
            raise ValueError(f"schema {where}: not an object")
        unknown = set(node) - SUPPORTED_KEYWORDS
        if unknown:
            raise ValueError(f"schema {where}: unsupported keywords {sorted(unknown)}")
        for key, sub in node.get("properties", {}).items():
            self._check_keywords(sub, f"{where}/properties/{key}")
        for key, sub in node.get("$defs", {}).items():
            self._check_keywords(sub, f"{where}/$defs/{key}")
        if "items" in node:
            self._check_keywords(node["items"], f"{where}/items")
        for i, sub in enumerate(node.get("anyOf", [])):
            self._check_keywords(sub, f"{where}/anyOf/{i}")
        ref = node.get("$ref")
        if ref is not None and not (isinstance(ref, str) and ref.removeprefix("#/$defs/") in self._defs):
            raise ValueError(f"schema {where}: $ref {ref!r} is not a local #/$defs/ entry")

    def problems(self, document: Any) -> list[str]:
        return list(self._walk(self.schema, document, ""))

    def is_valid(self, document: Any) -> bool:
        return next(self._walk(self.schema, document, ""), None) is None

    def _walk(self, node: Mapping[str, Any], value: Any, path: str) -> Iterator[str]:
        where = path or "manifest"
        if "$ref" in node:
            yield from self._walk(self._defs[node["$ref"].removeprefix("#/$defs/")], value, path)
        if "const" in node and not _json_equal(value, node["const"]):
            yield f"{where}: {_show(value)} is not {node['const']!r}"
            return
        if "enum" in node and not any(_json_equal(value, e) for e in node["enum"]):
            yield f"{where}: {_show(value)} is not one of {node['enum']}"
            return
        if "anyOf" in node and not any(not list(self._walk(s, value, path)) for s in node["anyOf"]):
            yield f"{where}: {_show(value)} matches none of the allowed forms"
            return
        kind = node.get("type")
        if kind is not None and not _is_type(value, kind):
            yield f"{where}: {_show(value)} is not {_ARTICLE[kind]}"
            return
        yield from self._scalar(node, value, where)
        if isinstance(value, dict):
            yield from self._object(node, value, path)
        elif isinstance(value, list):
            yield from self._array(node, value, path, where)

    def _scalar(self, node: Mapping[str, Any], value: Any, where: str) -> Iterator[str]:
        if "minimum" in node and _is_type(value, "number") and value < node["minimum"]:
            yield f"{where}: {_show(value)} is below the minimum {node['minimum']}"
        if isinstance(value, str):
            if len(value) < node.get("minLength", 0):
                yield f"{where}: {_show(value)} is shorter than {node['minLength']} characters"
            pattern = node.get("pattern")
            if pattern is not None and re.search(pattern, value) is None:
                yield f"{where}: {_show(value)} is not {node.get('description', f'matching {pattern!r}')}"

    def _object(self, node: Mapping[str, Any], value: dict[str, Any], path: str) -> Iterator[str]:
        props: dict[str, Any] = node.get("properties", {})
        for key in node.get("required", []):
            if key not in value:
                yield f"{_child(path, key)}: missing (required key {key!r})"
        for key, sub in props.items():
            if key in value:
                yield from self._walk(sub, value[key], _child(path, key))
        if node.get("additionalProperties", True) is False:
            for key in value:
                if key not in props:
                    yield f"{_child(path, key)}: not allowed here (expected one of {list(props)})"

    def _array(self, node: Mapping[str, Any], value: list[Any], path: str, where: str) -> Iterator[str]:
        if len(value) < node.get("minItems", 0):
            yield f"{where}: {_show(value)} has {len(value)} items, fewer than {node['minItems']}"
        if "maxItems" in node and len(value) > node["maxItems"]:
            yield f"{where}: {_show(value)} has {len(value)} items, more than {node['maxItems']}"
        if "items" in node:
            for i, item in enumerate(value):
                yield from self._walk(node["items"], item, f"{path}[{i}]")


def load_schema(path: Path) -> SchemaValidator:
    with open(path, encoding="utf-8") as fh:
        return SchemaValidator(json.load(fh))
