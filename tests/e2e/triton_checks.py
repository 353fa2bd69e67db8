"""Run by the tritonclient venv (.venv-triton), not by pytest: tritonclient needs protobuf < 7, the
project's stubs protobuf >= 7.35. Imports tritonclient, numpy and the standard library only.

    triton_checks.py URL MODEL WORK_DIR

WORK_DIR holds inputs.npz (x: float32 images, x8: uint8 images, z: latents) and wire.json (the
project's v2 descriptors). The script checks those descriptors against tritonclient's own, drives the
server with the sync and the aio client, writes outputs.npz for the calling test to compare with
vae.v1 answers, and prints one line per failed check (exit 1) or "ok" (exit 0).
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import tritonclient.grpc as sync_client
import tritonclient.grpc.aio as aio_client
from google.protobuf import descriptor_pool
from tritonclient.grpc import model_config_pb2, service_pb2  # noqa: F401  (registers the descriptors)
from tritonclient.utils import InferenceServerException

failures: list[str] = []


def check(ok: bool, what: str) -> None:
    if not ok:
        failures.append(what)


def wire(expected: dict[str, Any]) -> None:
    """Every field the project declares has tritonclient's number, name, type and label."""
    pool = descriptor_pool.Default()
    for full, fields in expected["messages"].items():
        try:
            theirs = pool.FindMessageTypeByName(full)
        except KeyError:
            failures.append(f"wire: tritonclient has no message {full}")
            continue
        by_number = {f.number: f for f in theirs.fields}
        for name, number, ftype, label, type_name in fields:
            f = by_number.get(number)
            got = None if f is None else [f.name, f.number, f.type, _label(f),
                                          f.message_type.full_name if f.message_type else
                                          f.enum_type.full_name if f.enum_type else ""]
            check(got == [name, number, ftype, label, type_name],
                  f"wire: {full} field {number}: ours {[name, ftype, label, type_name]}, tritonclient {got}")
    for full, values in expected["enums"].items():
        theirs = pool.FindEnumTypeByName(full)
        check({v.name: v.number for v in theirs.values}.items() >= dict(values).items(),
              f"wire: enum {full} differs")
    service = pool.FindServiceByName(expected["service"])
    for name, (inp, out) in expected["methods"].items():
        m = service.methods_by_name.get(name)
        got = None if m is None else [m.input_type.full_name, m.output_type.full_name]
        check(got == [inp, out], f"wire: rpc {name}: ours {[inp, out]}, tritonclient {got}")


def _label(f: Any) -> str:
    return "repeated" if f.is_repeated else "optional"


def _status(exc: InferenceServerException) -> str:
    return str(exc.status())


def _inputs(module: Any, name: str, array: np.ndarray, datatype: str) -> list[Any]:
    tensor = module.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array)
    return [tensor]


def sync_checks(url: str, model: str, data: Any, out: dict[str, np.ndarray]) -> None:
    c = sync_client.InferenceServerClient(url)
    enc, dec = f"{model}-encoder", f"{model}-decoder"
    check(c.is_server_live() and c.is_server_ready(), "sync: server live and ready")
    check(c.is_model_ready(enc) and c.is_model_ready(dec, "1"), "sync: models ready")
    check(not c.is_model_ready(f"{model}-nope"), "sync: an unknown model is not ready")
    check("model_repository" in c.get_server_metadata(as_json=True)["extensions"], "sync: extensions")
    meta = c.get_model_metadata(enc, as_json=True)
    check([i["name"] for i in meta["inputs"]] == ["x"] and meta["versions"] == ["1"],
          f"sync: metadata {meta}")
    config = c.get_model_config(dec, as_json=True)["config"]
    check(config["name"] == dec and int(config["max_batch_size"]) > 0, f"sync: config {config}")
    index = c.get_model_repository_index(as_json=True)["models"]
    check(sorted((m["name"], m["state"]) for m in index) == [(dec, "READY"), (enc, "READY")],
          f"sync: index {index}")
    c.unload_model(dec)
    check(not c.is_model_ready(dec), "sync: unloaded decoder not ready")
    c.load_model(dec)
    check(c.is_model_ready(dec), "sync: reloaded decoder ready")
    for call in (c.load_model, c.unload_model):
        try:
            call(f"{model}-nope")
            failures.append(f"sync: {call.__name__} of an unknown model succeeded")
        except InferenceServerException as exc:
            check(_status(exc) == "StatusCode.NOT_FOUND" and enc in exc.message(),
                  f"sync: {call.__name__} unknown: {_status(exc)} {exc.message()}")
    r = c.infer(enc, _inputs(sync_client, "x", data["x"], "FP32"))
    out["sync_mu"], out["sync_logvar"] = r.as_numpy("mu"), r.as_numpy("logvar")
    r8 = c.infer(enc, _inputs(sync_client, "x", data["x8"], "UINT8"),
                 outputs=[sync_client.InferRequestedOutput("mu")])
    out["sync_mu8"] = r8.as_numpy("mu")
    check(r8.as_numpy("logvar") is None, "sync: only the requested output comes back")
    rd = c.infer(dec, _inputs(sync_client, "z", data["z"], "FP32"), model_version="1")
    out["sync_x_mean"] = rd.as_numpy("x_mean")
    try:
        c.infer(f"{model}-nope", _inputs(sync_client, "z", data["z"], "FP32"))
        failures.append("sync: infer on an unknown model succeeded")
    except InferenceServerException as exc:
        check(_status(exc) == "StatusCode.NOT_FOUND", f"sync: infer unknown: {_status(exc)}")
    try:
        c.infer(dec, _inputs(sync_client, "z", data["z"][:, :2].copy(), "FP32"))
        failures.append("sync: infer with a wrong latent size succeeded")
    except InferenceServerException as exc:
        check(_status(exc) == "StatusCode.INVALID_ARGUMENT", f"sync: bad shape: {_status(exc)}")
    c.close()


async def aio_checks(url: str, model: str, data: Any, out: dict[str, np.ndarray]) -> None:
    c = aio_client.InferenceServerClient(url)
    enc, dec = f"{model}-encoder", f"{model}-decoder"
    try:
        check(await c.is_server_live() and await c.is_model_ready(enc), "aio: live and ready")
        meta = await c.get_model_metadata(dec, as_json=True)
        check([o["name"] for o in meta["outputs"]] == ["x_mean"], f"aio: metadata {meta}")
        index = await c.get_model_repository_index(as_json=True)
        check(len(index["models"]) == 2, f"aio: index {index}")
        await c.unload_model(enc)
        check(not await c.is_model_ready(enc), "aio: unloaded encoder not ready")
        await c.load_model(enc)
        check(await c.is_model_ready(enc), "aio: reloaded encoder ready")
        r, rd = await asyncio.gather(c.infer(enc, _inputs(aio_client, "x", data["x"], "FP32")),
                                     c.infer(dec, _inputs(aio_client, "z", data["z"], "FP32")))
        out["aio_mu"], out["aio_logvar"], out["aio_x_mean"] = (r.as_numpy("mu"), r.as_numpy("logvar"),
                                                               rd.as_numpy("x_mean"))
    finally:
        await c.close()


def main(argv: list[str]) -> int:
    url, model, work = argv[0], argv[1], Path(argv[2])
    wire(json.loads((work / "wire.json").read_text()))
    data = np.load(work / "inputs.npz")
    out: dict[str, np.ndarray] = {}
    sync_checks(url, model, data, out)
    asyncio.run(aio_checks(url, model, data, out))
    np.savez(work / "outputs.npz", **out)
    for line in failures:
        print(line)
    print("ok" if not failures else f"{len(failures)} check(s) failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
