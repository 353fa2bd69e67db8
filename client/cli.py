"""`vae client info|health|encode|decode|sample` (JSON on stdout, PNG grids for images) and
`vae health` (the probe used by the container HEALTHCHECK and Kubernetes: exit 0 only when SERVING)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from client.client import VaeClient
from client.errors import DataError, VaeClientError
from client.latent_cli import LATENT_COMMANDS, add_latent_args, latent_handlers
from client.options import ArgParser, BadInput, add_connection_args, configs_from_args, fail

__all__ = ["client_main", "health_main"]


def _emit(obj: Any) -> None:
    print(json.dumps(obj, indent=2))


def _grid_scale(shape: tuple[int, ...], scale: int | None) -> int:
    return scale if scale else max(1, 64 // max(1, shape[-1]))  # small images are blown up to ~64 px


def _save_outputs(args: argparse.Namespace, arrays: dict[str, np.ndarray], images: np.ndarray | None,
                  result: dict[str, Any], ncol: int | None = None) -> None:
    from client.images import save_grid
    from client.shards import atomic_write_bytes, npz_bytes

    if args.out:
        atomic_write_bytes(Path(args.out), npz_bytes(arrays))
        result["out"] = str(Path(args.out).resolve())
    if images is not None and getattr(args, "grid", None):
        save_grid(images, Path(args.grid), ncol=ncol, scale=_grid_scale(images.shape, args.scale))
        result["grid"] = str(Path(args.grid).resolve())


def _info(c: VaeClient, args: argparse.Namespace) -> int:
    from google.protobuf.json_format import MessageToDict

    info = MessageToDict(c.info(), preserving_proto_field_name=True,
                         always_print_fields_with_no_presence=True)
    # proto3 JSON writes 64-bit integers as strings; people and jq want numbers.
    info["input_shape"] = [int(v) for v in info.get("input_shape", [])]
    info["limits"] = {k: int(v) for k, v in info.get("limits", {}).items()}
    _emit(info)
    return 0


def _health(c: VaeClient, args: argparse.Namespace) -> int:
    status = c.health(args.service)
    _emit({"target": c.target, "service": args.service, "status": status})
    return 0 if status == "SERVING" else 1


def _encode(c: VaeClient, args: argparse.Namespace) -> int:
    from client.data import load_dataset

    images = load_dataset(args.data)
    if args.limit is not None:
        images = images[: args.limit]
    res = c.encode(images, sample=args.sample, seed=args.seed)
    result: dict[str, Any] = {"n": int(len(res.mu)), "latent_dim": int(res.mu.shape[1])}
    arrays = {"mu": res.mu, "logvar": res.logvar}
    if res.z is not None:
        arrays["z"] = res.z
    if not args.out:  # at a terminal without --out: the numbers themselves
        result.update({k: np.round(v, 6).tolist() for k, v in arrays.items()})
    _save_outputs(args, arrays, None, result)
    _emit(result)
    return 0


def _read_latents(spec: str) -> np.ndarray:
    path = Path(spec)
    try:
        if path.suffix == ".npy":
            arr: np.ndarray = np.load(path, allow_pickle=False)
            return arr
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                for key in ("z", "latents", "mu"):
                    if key in z:
                        found: np.ndarray = z[key]
                        return found
                raise DataError(f"{path}: no 'z', 'latents' or 'mu' array in {list(z.keys())}")
        return np.asarray(json.loads(spec), dtype=np.float32)
    except (OSError, ValueError) as exc:
        raise DataError(f"--z {spec!r}: not a .npy/.npz file or a JSON list of latents ({exc})") from None


def _decode(c: VaeClient, args: argparse.Namespace) -> int:
    z = _read_latents(args.z)
    images = c.decode(z, uint8=True)
    result: dict[str, Any] = {"n": int(len(images)), "shape": list(images.shape)}
    _save_outputs(args, {"images": images, "z": np.asarray(z, np.float32)}, images, result)
    _emit(result)
    return 0


def _sample(c: VaeClient, args: argparse.Namespace) -> int:
    res = c.sample(args.n, seed=args.seed, temperature=args.temperature, uint8=True, return_latents=True)
    result: dict[str, Any] = {"n": int(len(res.images)), "seed": args.seed, "temperature": args.temperature,
                              "shape": list(res.images.shape)}
    assert res.z is not None
    _save_outputs(args, {"images": res.images, "latents": res.z}, res.images, result)
    _emit(result)
    return 0


def _parser() -> ArgParser:
    p = ArgParser(prog="vae client", description="Call a VAE server; JSON on stdout, PNG grids for images.")
    sub = p.add_subparsers(dest="cmd", required=True,
                           metavar="{info,health,encode,decode,sample,score,interpolate,traverse,edit}",
                           parser_class=ArgParser)
    for name, text in (("info", "served model, shapes, limits, execution provider"),
                       ("health", "gRPC health status (exit 0 when SERVING)"),
                       ("encode", "images -> mu, logvar"), ("decode", "latents -> images"),
                       ("sample", "prior samples -> images")):
        sp = sub.add_parser(name, help=text, description=text)
        add_connection_args(sp)
        if name == "health":
            sp.add_argument("--service", default="", help="health service name (default '': the server)")
        if name == "encode":
            sp.add_argument("--data", required=True, help="'digits', IDX, .npz, .npy or an image folder")
            sp.add_argument("--limit", type=int, help="encode only the first N images")
            sp.add_argument("--sample", action="store_true", help="also draw z from the posterior")
            sp.add_argument("--seed", type=int, help="seed of the posterior sample")
        if name == "decode":
            sp.add_argument("--z", required=True, help="a .npy/.npz file of latents [N, D], or a JSON list")
        if name == "sample":
            sp.add_argument("--n", type=int, default=16, help="number of samples (default 16)")
            sp.add_argument("--seed", type=int, help="same seed, n and temperature: same images")
            sp.add_argument("--temperature", type=float, default=1.0, help="prior std scale (default 1)")
        if name in ("encode", "decode", "sample"):
            sp.add_argument("--out", help="write the arrays to this .npz")
        if name in ("decode", "sample"):
            sp.add_argument("--grid", help="write the images as one PNG grid")
            sp.add_argument("--scale", type=int, help="pixel scale of the grid (default: ~64 px per image)")
    for name, text in LATENT_COMMANDS:
        sp = sub.add_parser(name, help=text, description=text)
        add_connection_args(sp)
        add_latent_args(name, sp)
    return p


def client_main(argv: list[str]) -> int:
    handlers = {"info": _info, "health": _health, "encode": _encode, "decode": _decode, "sample": _sample}
    latent = latent_handlers()
    try:
        args = _parser().parse_args(argv)
        config = configs_from_args(args)
        if len(config) != 1:
            raise ValueError("vae client takes one --target")
    except (BadInput, ValueError) as exc:
        return fail("vae client", str(exc).removeprefix("vae client: "), 2)
    except SystemExit as exc:  # --help
        return int(exc.code or 0)
    try:
        with VaeClient(config=config[0]) as c:
            if args.cmd in latent:
                return int(latent[args.cmd](c, args, _save_outputs, _emit))
            return handlers[args.cmd](c, args)
    except (DataError, ValueError, TypeError) as exc:
        return fail(f"vae client {args.cmd}", str(exc), 2)
    except VaeClientError as exc:
        return fail(f"vae client {args.cmd}", str(exc), 1)
    except OSError as exc:
        return fail(f"vae client {args.cmd}", f"cannot write output: {exc.strerror or exc}", 2)


def health_main(argv: list[str]) -> int:
    p = ArgParser(prog="vae health", description="gRPC health check; exit 0 only when SERVING.")
    add_connection_args(p, default_timeout=5.0, default_retries=1)
    p.add_argument("--service", default="", help="health service name (default '': the whole server)")
    try:
        args = p.parse_args(argv)
        config = configs_from_args(args)[0]
    except (BadInput, ValueError) as exc:
        return fail("vae health", str(exc).removeprefix("vae health: "), 2)
    except SystemExit as exc:
        return int(exc.code or 0)
    try:
        with VaeClient(config=config) as c:
            status = c.health(args.service)
    except VaeClientError as exc:
        return fail("vae health", str(exc), 1)
    print(f"{config.target} {args.service or '(server)'}: {status}", file=sys.stdout)
    return 0 if status == "SERVING" else 1
