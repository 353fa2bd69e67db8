"""Regenerate (or, with --check, verify) the Python stubs of protos/vae/v1/vae.proto.

grpc_tools writes absolute imports rooted at the proto path (`from vae.v1 import vae_pb2`); the stubs
live in the `protos` package, so that import is rewritten to `from protos.vae.v1 import vae_pb2`.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent
PROTO = Path("vae/v1/vae.proto")
OUTPUTS = ("vae_pb2.py", "vae_pb2.pyi", "vae_pb2_grpc.py")


def generate(out_dir: Path) -> None:
    from grpc_tools import protoc  # dev-only dependency

    out_dir.mkdir(parents=True, exist_ok=True)
    args = [
        "protoc",
        f"-I{ROOT}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        str(ROOT / PROTO),
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    for name in OUTPUTS:
        path = out_dir / PROTO.parent / name
        text = path.read_text()
        text = text.replace("from vae.v1 import", "from protos.vae.v1 import")
        path.write_text(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if the committed stubs are stale")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp))
        stale = []
        for name in OUTPUTS:
            fresh = (Path(tmp) / PROTO.parent / name).read_text()
            committed = ROOT / PROTO.parent / name
            if args.check:
                if not committed.exists() or committed.read_text() != fresh:
                    stale.append(str(committed.relative_to(ROOT.parent)))
            else:
                committed.write_text(fresh)
    if stale:
        print("stale generated stubs (run `make protos`): " + ", ".join(stale), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
