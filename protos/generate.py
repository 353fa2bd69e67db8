"""Regenerate (or, with --check, verify) the Python stubs of protos/vae/v1/vae.proto and of the Open
Inference Protocol files under protos/inference/.

grpc_tools writes absolute imports rooted at the proto path (`from vae.v1 import vae_pb2`); the stubs
live in the `protos` package, so that import is rewritten to `from protos.vae.v1 import vae_pb2`
(and `from inference import` to `from protos.inference import`).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent
# Each .proto and the generated files kept for it (a file without a service keeps no *_pb2_grpc.py).
PROTOS: dict[Path, tuple[str, ...]] = {
    Path("vae/v1/vae.proto"): ("vae_pb2.py", "vae_pb2.pyi", "vae_pb2_grpc.py"),
    Path("inference/grpc_service.proto"): ("grpc_service_pb2.py", "grpc_service_pb2.pyi",
                                           "grpc_service_pb2_grpc.py"),
    Path("inference/model_config.proto"): ("model_config_pb2.py", "model_config_pb2.pyi"),
}
IMPORTS = (("from vae.v1 import", "from protos.vae.v1 import"),
           ("from inference import", "from protos.inference import"))


def _outputs() -> list[Path]:
    return [proto.parent / name for proto, names in PROTOS.items() for name in names]


def generate(out_dir: Path) -> None:
    from grpc_tools import protoc  # dev-only dependency

    out_dir.mkdir(parents=True, exist_ok=True)
    args = [
        "protoc",
        f"-I{ROOT}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *(str(ROOT / proto) for proto in PROTOS),
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    for rel in _outputs():
        path = out_dir / rel
        text = path.read_text()
        for old, new in IMPORTS:
            text = text.replace(old, new)
        path.write_text(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if the committed stubs are stale")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp))
        stale = []
        for rel in _outputs():
            fresh = (Path(tmp) / rel).read_text()
            committed = ROOT / rel
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
