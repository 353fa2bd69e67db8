"""`vae export` and `vae verify`. Exit codes (docs/CONTRACTS.md): 0 ok, 1 verification failed,
2 bad input (missing or foreign checkpoint, unknown architecture, data mismatch, occupied output)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

__all__ = ["export_main", "verify_main", "build_export_parser", "build_verify_parser"]


def build_export_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="vae export", description="Split a VAE checkpoint into verified encoder/decoder ONNX graphs "
        "plus manifest.json (nothing is written unless onnxruntime matches torch).")
    p.add_argument("source", type=Path, help="checkpoint file, or a run folder (its best.pt)")
    out = p.add_mutually_exclusive_group(required=True)
    out.add_argument("--out", type=Path, help="model folder to write")
    out.add_argument("--repository", type=Path, default=None, metavar="REPO",
                     help="model repository: write REPO/NAME/VERSION/ (VERSION = the next integer; "
                          "needs --name)")
    p.add_argument("--repository-version", type=int, default=None, metavar="N",
                   help="with --repository: this version number instead of the next (never overwrites)")
    p.add_argument("--reference-data", "--data", dest="data", default=None, metavar="PATH",
                   help="recompute the latent reference statistics on the train split of these images "
                        "(default: the statistics the trainer stored in the checkpoint, or for an older "
                        "checkpoint its own training data); recorded in the manifest. --data is an alias")
    p.add_argument("--fp16", action="store_true", help="also write float16 graphs (for GPUs)")
    p.add_argument("--triton", type=Path, default=None, metavar="REPO_DIR",
                   help="also write a Triton/KServe model repository there")
    p.add_argument("--force", action="store_true",
                   help="replace an output folder (or Triton models) holding another model")
    p.add_argument("--name", default=None, help="model name (default: vae)")
    p.add_argument("--model-version", default=None,
                   help="model version (default: first 12 hex digits of the checkpoint's sha256)")
    p.add_argument("-q", "--quiet", action="store_true", help="print nothing on success")
    return p


def build_verify_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="vae verify", description="Re-check an exported model folder: manifest schema, hashes, "
        "sizes, graph I/O and metadata, a run on onnxruntime, and with --checkpoint parity with torch.")
    p.add_argument("model_dir", type=Path)
    p.add_argument("--checkpoint", type=Path, default=None,
                   help="checkpoint (or run folder) the model was exported from: also check parity")
    return p


def _origin(m: dict[str, Any]) -> str:
    td = m["training_data"]
    if td.get("reference_from") == "checkpoint":
        return "stored in the checkpoint"
    return f"computed on {td['source']}" + (", an override" if td.get("override") else "")


def _summary(out: Path, m: dict[str, Any]) -> str:
    ref = m["reference"]
    graphs = ", ".join(f"{g['file']} ({g['size_bytes'] / 1024:.0f} KiB)" for g in m["graphs"].values())
    worst = max(m["verification"]["max_abs_diff"].items(), key=lambda kv: kv[1] if "fp16" not in kv[0]
                else -1.0)
    return (f"exported {m['model']['name']} {m['model']['version']} to {out}: {graphs}\n"
            f"verified on batches {m['verification']['batches']}: worst fp32 |ort - torch| = "
            f"{worst[1]:.2e} ({worst[0]}) <= {m['verification']['tolerance']:g}\n"
            f"reference ({_origin(m)}) on {ref['n_images']} images: {ref['active_units']}/{m['latent_dim']} "
            f"active units, KL per image mean {ref['kl_per_sample']['mean']:.2f} nats "
            f"(p50 {ref['kl_per_sample']['p50']:.2f}, p99 {ref['kl_per_sample']['p99']:.2f})")


def export_main(argv: list[str]) -> int:
    parser = build_export_parser()
    args = parser.parse_args(argv)
    from exporter.errors import ExportError
    from exporter.export import export_model
    from exporter.repository import version_dir

    if args.repository is None and args.repository_version is not None:
        parser.error("--repository-version needs --repository")
    if args.repository is not None and not args.name:
        parser.error("--repository needs --name (the model's folder in the repository)")
    try:
        if args.repository is not None:
            args.out, _ = version_dir(args.repository, args.name, args.repository_version)
        m = export_model(args.source, args.out, data=args.data, fp16=args.fp16, triton_dir=args.triton,
                         force=args.force, model_name=args.name, model_version=args.model_version)
    except ExportError as exc:
        print(f"vae export: {exc}", file=sys.stderr)
        return exc.exit_code
    except OSError as exc:  # e.g. no space left, permission denied on the output folder
        print(f"vae export: {exc}", file=sys.stderr)
        return 2
    if not args.quiet:
        print(_summary(args.out, m))
        if args.triton is not None:
            print(f"Triton repository: {args.triton}")
    return 0


def verify_main(argv: list[str]) -> int:
    args = build_verify_parser().parse_args(argv)
    from exporter.validate import verify_model_dir

    if not args.model_dir.is_dir():
        print(f"vae verify: {args.model_dir}: no such folder", file=sys.stderr)
        return 2
    if args.checkpoint is not None and not args.checkpoint.exists():
        print(f"vae verify: {args.checkpoint}: no such file", file=sys.stderr)
        return 2
    from exporter.errors import ModelDirError
    from exporter.manifest import read_manifest

    try:  # a manifest that is not JSON at all is bad input: one line, exit 2 (as `vae serve` does)
        read_manifest(args.model_dir)
    except ModelDirError as exc:
        print(f"vae verify: {exc}", file=sys.stderr)
        return 2
    except OSError:
        pass  # a missing manifest is one of the problems verify_model_dir lists
    problems = verify_model_dir(args.model_dir, args.checkpoint)
    if problems:
        print(f"vae verify: {args.model_dir}: {len(problems)} problem(s)", file=sys.stderr)
        for p in problems:
            print(f"  - {p}", file=sys.stderr)
        return 1
    checked = "hashes, graphs, metadata" + (", parity with the checkpoint" if args.checkpoint else "")
    print(f"{args.model_dir}: OK ({checked})")
    return 0
