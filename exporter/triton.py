"""A Triton Inference Server (KServe v2) model repository holding the same verified graphs.

Layout: REPO/<name>_encoder/1/model.onnx + config.pbtxt, REPO/<name>_decoder/1/model.onnx + config.pbtxt.
config.pbtxt is protobuf text format of Triton's `inference.ModelConfig`. Triton's model_config.proto is
not a dependency here, so the subset of it we write is declared below with the same package, message,
field and enum names and numbers; `text_format` then both writes the files and parses them strictly
(an unknown field name is an error), which is what the tests use.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format
from google.protobuf.message import Message

from contracts.files import replace_dir, stage_dir, write_bytes_synced

__all__ = ["MAX_BATCH_SIZE", "QUEUE_DELAY_US", "model_config_class", "config_text", "parse_config",
           "write_repository", "repository_conflicts", "triton_model_names"]

MAX_BATCH_SIZE = 256
QUEUE_DELAY_US = 500  # how long Triton's dynamic batcher may hold a request to fill a batch
_DTYPE = {"float32": "TYPE_FP32", "float16": "TYPE_FP16"}

_F = descriptor_pb2.FieldDescriptorProto


def _field(msg: Any, name: str, number: int, ftype: int, *, repeated: bool = False,
           type_name: str = "") -> None:
    f = msg.field.add()
    f.name, f.number, f.type = name, number, ftype
    f.label = _F.LABEL_REPEATED if repeated else _F.LABEL_OPTIONAL
    if type_name:
        f.type_name = type_name


def _build_pool() -> descriptor_pool.DescriptorPool:
    fd = descriptor_pb2.FileDescriptorProto(name="vae_triton_model_config_subset.proto",
                                            package="inference", syntax="proto3")
    dt = fd.enum_type.add(name="DataType")
    for i, n in enumerate(["TYPE_INVALID", "TYPE_BOOL", "TYPE_UINT8", "TYPE_UINT16", "TYPE_UINT32",
                           "TYPE_UINT64", "TYPE_INT8", "TYPE_INT16", "TYPE_INT32", "TYPE_INT64",
                           "TYPE_FP16", "TYPE_FP32", "TYPE_FP64", "TYPE_STRING", "TYPE_BF16"]):
        dt.value.add(name=n, number=i)
    inp = fd.message_type.add(name="ModelInput")
    _field(inp, "name", 1, _F.TYPE_STRING)
    _field(inp, "data_type", 2, _F.TYPE_ENUM, type_name=".inference.DataType")
    _field(inp, "dims", 4, _F.TYPE_INT64, repeated=True)
    out = fd.message_type.add(name="ModelOutput")
    _field(out, "name", 1, _F.TYPE_STRING)
    _field(out, "data_type", 2, _F.TYPE_ENUM, type_name=".inference.DataType")
    _field(out, "dims", 3, _F.TYPE_INT64, repeated=True)
    group = fd.message_type.add(name="ModelInstanceGroup")
    kind = group.enum_type.add(name="Kind")
    for i, n in enumerate(["KIND_AUTO", "KIND_GPU", "KIND_CPU", "KIND_MODEL"]):
        kind.value.add(name=n, number=i)
    _field(group, "name", 1, _F.TYPE_STRING)
    _field(group, "count", 2, _F.TYPE_INT32)
    _field(group, "kind", 4, _F.TYPE_ENUM, type_name=".inference.ModelInstanceGroup.Kind")
    dyn = fd.message_type.add(name="ModelDynamicBatching")
    _field(dyn, "preferred_batch_size", 1, _F.TYPE_INT32, repeated=True)
    _field(dyn, "max_queue_delay_microseconds", 2, _F.TYPE_UINT64)
    cfg = fd.message_type.add(name="ModelConfig")
    _field(cfg, "name", 1, _F.TYPE_STRING)
    _field(cfg, "platform", 2, _F.TYPE_STRING)
    _field(cfg, "max_batch_size", 4, _F.TYPE_INT32)
    _field(cfg, "input", 5, _F.TYPE_MESSAGE, repeated=True, type_name=".inference.ModelInput")
    _field(cfg, "output", 6, _F.TYPE_MESSAGE, repeated=True, type_name=".inference.ModelOutput")
    _field(cfg, "instance_group", 7, _F.TYPE_MESSAGE, repeated=True,
           type_name=".inference.ModelInstanceGroup")
    _field(cfg, "default_model_filename", 8, _F.TYPE_STRING)
    _field(cfg, "dynamic_batching", 11, _F.TYPE_MESSAGE, type_name=".inference.ModelDynamicBatching")
    _field(cfg, "backend", 17, _F.TYPE_STRING)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fd)
    return pool


_POOL = _build_pool()


def model_config_class() -> type[Message]:
    """The message class of (our subset of) Triton's `inference.ModelConfig`."""
    cls: type[Message] = message_factory.GetMessageClass(_POOL.FindMessageTypeByName("inference.ModelConfig"))
    return cls


def parse_config(text: str) -> Message:
    """Parse config.pbtxt text strictly (unknown fields raise text_format.ParseError)."""
    msg = model_config_class()()
    text_format.Parse(text, msg)
    return msg


def triton_model_names(model_name: str) -> dict[str, str]:
    return {"encoder": f"{model_name}_encoder", "decoder": f"{model_name}_decoder"}


def config_text(name: str, graph: dict[str, Any], *, max_batch_size: int = MAX_BATCH_SIZE,
                queue_delay_us: int = QUEUE_DELAY_US) -> str:
    """config.pbtxt for one graph entry of the manifest. Triton's dims omit the batch axis when
    max_batch_size > 0; the ONNX graphs' batch axis is dynamic, so Triton may batch up to the limit."""
    msg: Any = model_config_class()()
    msg.name = name
    msg.platform = "onnxruntime_onnx"
    msg.max_batch_size = max_batch_size
    for side, field in (("inputs", msg.input), ("outputs", msg.output)):
        for t in graph[side]:
            spec = field.add()
            spec.name = t["name"]
            spec.data_type = _POOL.FindEnumTypeByName("inference.DataType").values_by_name[
                _DTYPE[t["dtype"]]].number
            spec.dims.extend(int(d) for d in t["shape"][1:])
    preferred = sorted({b for b in (16, 64, max_batch_size) if b <= max_batch_size})
    msg.dynamic_batching.preferred_batch_size.extend(preferred)
    msg.dynamic_batching.max_queue_delay_microseconds = queue_delay_us
    group = msg.instance_group.add()
    group.count = 1
    group.kind = 0  # KIND_AUTO: a GPU when Triton has one, else CPU
    return str(text_format.MessageToString(msg))


def repository_conflicts(repo_dir: Path, model_name: str, model_version: str) -> list[str]:
    """Model folders in `repo_dir` that this export would replace although they hold another model
    (a different vae.model_version in their graph's metadata, or something this exporter did not write)."""
    import onnx

    problems = []
    for tname in triton_model_names(model_name).values():
        folder = repo_dir / tname
        if not folder.exists():
            continue
        try:
            proto = onnx.load(str(folder / "1" / "model.onnx"), load_external_data=False)
            meta = {p.key: p.value for p in proto.metadata_props}
        except Exception:  # missing or unreadable: not ours
            problems.append(f"{folder} exists and does not hold a model written by this exporter")
            continue
        if meta.get("vae.model_version") != model_version:
            problems.append(f"{folder} holds model version {meta.get('vae.model_version')!r}, not "
                            f"{model_version!r}")
    return problems


def write_repository(repo_dir: Path, model_dir: Path, manifest: dict[str, Any], *,
                     max_batch_size: int = MAX_BATCH_SIZE) -> list[Path]:
    """Write the encoder and decoder (float32) models into `repo_dir`, each staged in a temp folder
    beside its final place and renamed into it, so Triton never sees half a model folder."""
    repo_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for graph_key, tname in triton_model_names(manifest["model"]["name"]).items():
        graph = manifest["graphs"][graph_key]
        final = repo_dir / tname
        stage = stage_dir(final)
        try:
            (stage / "1").mkdir()
            shutil.copyfile(model_dir / graph["file"], stage / "1" / "model.onnx")
            write_bytes_synced(stage / "config.pbtxt",
                        config_text(tname, graph, max_batch_size=max_batch_size).encode())
            replace_dir(stage, final)
        except BaseException:
            shutil.rmtree(stage, ignore_errors=True)
            raise
        written.append(final)
    return written
