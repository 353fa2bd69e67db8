"""`vae client score|interpolate|traverse|edit`: the latent-space calls from the command line.

Images come from --data ('digits', IDX, .npz, .npy or a folder of PNG/JPEG), picked by index; a latent
may be given instead as a JSON list. Results: JSON on stdout, PNG grids (--grid), numbers in .npz (--out).
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import numpy as np

from client.client import VaeClient
from client.errors import DataError

__all__ = ["LATENT_COMMANDS", "add_latent_args", "latent_handlers"]

LATENT_COMMANDS = (
    ("score", "images -> ELBO per image (and IWAE with --k > 1), nats"),
    ("interpolate", "a path between two images (or latents), decoded"),
    ("traverse", "move one latent dimension per row, decoded"),
    ("edit", "add scale x direction to each image's latent, decoded"),
)


def _floats(text: str, what: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise DataError(f"{what}: {text!r} is not a comma-separated list of numbers") from None


def _images(args: argparse.Namespace) -> np.ndarray:
    from client.data import load_dataset

    images = load_dataset(args.data)
    if getattr(args, "limit", None) is not None:
        images = images[: args.limit]
    if len(images) == 0:
        raise DataError(f"{args.data}: no images")
    return images


def _pick(spec: str, args: argparse.Namespace, what: str, cache: dict[str, np.ndarray]) -> np.ndarray:
    """An index into --data (one image), or a JSON list (one latent)."""
    if spec.lstrip().startswith("["):
        try:
            return np.asarray(json.loads(spec), dtype=np.float32)
        except ValueError:
            raise DataError(f"{what}: {spec!r} is not a JSON list of numbers") from None
    if not args.data:
        raise DataError(f"{what}: an image index needs --data")
    if "images" not in cache:
        cache["images"] = _images(args)
    images = cache["images"]
    try:
        index = int(spec)
    except ValueError:
        raise DataError(f"{what}: {spec!r} is neither an image index nor a JSON latent list") from None
    if not -len(images) <= index < len(images):
        raise DataError(f"{what}: index {index} out of range for {len(images)} images in {args.data}")
    return np.asarray(images[index])


def _score(c: VaeClient, args: argparse.Namespace, save: Any, emit: Any) -> int:
    images = _images(args)
    res = c.score(images, k=args.k, seed=args.seed)
    result: dict[str, Any] = {"n": int(len(res.elbo)), "k": res.k, "likelihood": res.likelihood,
                              "elbo_mean": float(res.elbo.mean()), "elbo_min": float(res.elbo.min()),
                              "elbo_max": float(res.elbo.max())}
    arrays = {"elbo": res.elbo, "log_px": res.log_px, "kl": res.kl}
    if res.iwae is not None:
        arrays["iwae"] = res.iwae
        result["iwae_mean"] = float(res.iwae.mean())
    if not args.out:
        result.update({k: np.round(v, 6).tolist() for k, v in arrays.items()})
    save(args, arrays, None, result)
    emit(result)
    return 0


def _interpolate(c: VaeClient, args: argparse.Namespace, save: Any, emit: Any) -> int:
    cache: dict[str, np.ndarray] = {}
    a, b = _pick(args.a, args, "--a", cache), _pick(args.b, args, "--b", cache)
    path = c.interpolate(a, b, steps=args.steps, method=args.method, uint8=True)
    result: dict[str, Any] = {"steps": args.steps, "method": args.method, "shape": list(path.images.shape),
                              "latent_norms": np.round(np.linalg.norm(path.z, axis=1), 6).tolist()}
    save(args, {"images": path.images, "z": path.z}, path.images, result, ncol=args.steps)
    emit(result)
    return 0


def _traverse(c: VaeClient, args: argparse.Namespace, save: Any, emit: Any) -> int:
    base = _pick(args.base, args, "--base", {})
    dims = [int(v) for v in _floats(args.dims, "--dims")] if args.dims else None
    res = c.traverse(base, dims=dims, n_dims=args.n_dims, low=args.low, high=args.high, steps=args.steps,
                     uint8=True)
    rows, steps = res.images.shape[:2]
    images = res.images.reshape(rows * steps, *res.images.shape[2:])
    result: dict[str, Any] = {"dims": res.dims, "steps": steps, "shape": list(images.shape)}
    save(args, {"images": images, "z": res.z.reshape(rows * steps, -1), "dims": np.asarray(res.dims)},
         images, result, ncol=steps)
    emit(result)
    return 0


def _edit(c: VaeClient, args: argparse.Namespace, save: Any, emit: Any) -> int:
    from client.data import load_dataset

    images = _images(args)
    if args.direction and (args.with_data or args.without_data):
        raise DataError("give --direction, or --with and --without, not both")
    if args.direction:
        direction = np.asarray(_floats(args.direction.strip("[]"), "--direction"), dtype=np.float32)
    elif args.with_data and args.without_data:
        direction = c.attribute_direction(load_dataset(args.with_data), load_dataset(args.without_data))
    else:
        raise DataError("give --direction (comma-separated, D numbers) or --with DATA and --without DATA")
    scales = _floats(args.scales, "--scales")
    if not scales:
        raise DataError("--scales: give at least one scale")
    res = c.edit(images, direction, scales=scales, uint8=True)
    n, s = res.images.shape[:2]
    flat = res.images.reshape(n * s, *res.images.shape[2:])
    result: dict[str, Any] = {"n": int(n), "scales": scales, "shape": list(flat.shape),
                              "direction": np.round(direction, 6).tolist()}
    save(args, {"images": flat, "z": res.z.reshape(n * s, -1), "direction": direction}, flat, result, ncol=s)
    emit(result)
    return 0


def latent_handlers() -> dict[str, Any]:
    return {"score": _score, "interpolate": _interpolate, "traverse": _traverse, "edit": _edit}


def add_latent_args(name: str, sp: argparse.ArgumentParser) -> None:
    data_help = "'digits', IDX, .npz, .npy or an image folder"
    if name in ("score", "edit"):
        sp.add_argument("--data", required=True, help=data_help)
        sp.add_argument("--limit", type=int, help="only the first N images")
    else:
        sp.add_argument("--data", help=data_help + " (the images the indices refer to)")
    if name == "score":
        sp.add_argument("--k", type=int, default=1,
                        help="posterior samples per image; > 1 adds IWAE (default 1)")
        sp.add_argument("--seed", type=int, default=0, help="seed of the posterior noise (default 0)")
    if name == "interpolate":
        sp.add_argument("--a", required=True, help="image index into --data, or a JSON latent list")
        sp.add_argument("--b", required=True, help="image index into --data, or a JSON latent list")
        sp.add_argument("--steps", type=int, default=8, help="points on the path, endpoints included")
        sp.add_argument("--method", choices=("spherical", "linear"), default="spherical")
    if name == "traverse":
        sp.add_argument("--base", required=True, help="image index into --data, or a JSON latent list")
        sp.add_argument("--dims", help="comma-separated dimensions (default: ranked by the reference KL)")
        sp.add_argument("--n-dims", type=int, default=0, help="rows when --dims is not given (0: min(8, D))")
        sp.add_argument("--low", type=float, help="lowest value (default -3)")
        sp.add_argument("--high", type=float, help="highest value (default 3)")
        sp.add_argument("--steps", type=int, default=7, help="values per row (default 7)")
    if name == "edit":
        sp.add_argument("--direction", help="comma-separated direction, D numbers")
        sp.add_argument("--with", dest="with_data", help="images with the attribute (direction = mean "
                                                          "latent of these minus that of --without)")
        sp.add_argument("--without", dest="without_data", help="images without the attribute")
        sp.add_argument("--scales", default="-2,-1,0,1,2", help="comma-separated scales (default -2..2)")
    sp.add_argument("--out", help="write the numbers to this .npz")
    if name != "score":
        sp.add_argument("--grid", help="write the images as one PNG grid (one row per path / dim / image)")
        sp.add_argument("--scale", type=int, help="pixel scale of the grid (default: ~64 px per image)")
