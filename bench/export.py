"""Per-call latency of the exported graphs on onnxruntime (CPU) against torch eager, at B=1 and B=256,
for the encoder and the decoder. Prints a table and writes JSON (default .bench/export.json).

Without --source it uses the two stock architectures at 28x28 (the `textbook` MLP 784-400-20 and the
`grey28` residual conv VAE); latency does not depend on the weights' values, so they are used as
initialised. Calls of the two runtimes are interleaved round by round so that both see the same
machine load: compare the ratios, not the absolute figures, on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from exporter.graphs import DECODER_IO, ENCODER_IO, DecoderGraph, EncoderGraph, export_graph  # noqa: E402

__all__ = ["main"]


def _models(source: str | None) -> dict[str, torch.nn.Module]:
    if source:
        from exporter.source import load_source

        return {Path(source).name: load_source(Path(source)).model}
    from trainer.config import ModelConfig
    from trainer.model import build_model
    from trainer.presets import PRESETS

    out = {}
    for name in ("textbook", "grey28"):
        overrides = dict(PRESETS[name][1])
        out[name] = build_model(ModelConfig(input_shape=(1, 28, 28), **overrides)).eval()
    return out


def _time_pair(run_torch: Any, run_ort: Any, rounds: int, calls: int) -> tuple[list[float], list[float]]:
    """Median-per-round microseconds of each runtime, alternating runtimes every round."""
    t_torch, t_ort = [], []
    for _ in range(3):  # warm-up: allocator, kernels, ORT's first-run graph work
        run_torch()
        run_ort()
    for _ in range(rounds):
        for fn, acc in ((run_torch, t_torch), (run_ort, t_ort)):
            samples = []
            for _ in range(calls):
                t0 = time.perf_counter()
                fn()
                samples.append(time.perf_counter() - t0)
            acc.append(statistics.median(samples) * 1e6)
    return t_torch, t_ort


def bench(source: str | None, batches: list[int], threads: int, rounds: int) -> list[dict[str, Any]]:
    torch.set_num_threads(threads)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, model in _models(source).items():
            c, h, w = model.cfg.input_shape
            d = model.cfg.latent_dim
            graphs = {
                "encoder": (EncoderGraph(model), (c, h, w), ENCODER_IO),
                "decoder": (DecoderGraph(model), (d,), DECODER_IO),
            }
            for graph, (module, shape, (ins, outs)) in graphs.items():
                path = Path(tmp) / f"{name}-{graph}.onnx"
                export_graph(
                    module, torch.rand(2, *shape), path, input_names=ins, output_names=outs, metadata={}
                )
                sess = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
                for b in batches:
                    x = np.random.default_rng(0).random((b, *shape), dtype=np.float32)
                    xt = torch.from_numpy(x)

                    def run_torch(module: torch.nn.Module = module, xt: torch.Tensor = xt) -> None:
                        with torch.inference_mode():
                            module(xt)

                    def run_ort(
                        sess: ort.InferenceSession = sess, x: np.ndarray = x, name: str = ins[0]
                    ) -> None:
                        sess.run(None, {name: x})

                    calls = 50 if b <= 16 else 5
                    t_torch, t_ort = _time_pair(run_torch, run_ort, rounds, calls)
                    tt, to = statistics.median(t_torch), statistics.median(t_ort)
                    rows.append(
                        {
                            "model": name,
                            "graph": graph,
                            "batch": b,
                            "torch_us": round(tt, 1),
                            "ort_us": round(to, 1),
                            "speedup": round(tt / to, 2),
                            "ort_images_per_s": round(b / (to * 1e-6)),
                        }
                    )
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--source", help="checkpoint or run folder (default: the stock 28x28 architectures)")
    p.add_argument("--batches", default="1,256", help="comma-separated batch sizes (default 1,256)")
    p.add_argument("--threads", type=int, default=1, help="intra-op threads of both runtimes (default 1)")
    p.add_argument("--rounds", type=int, default=7, help="alternating measurement rounds (default 7)")
    p.add_argument("--out", type=Path, default=ROOT / ".bench" / "export.json")
    args = p.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    rows = bench(args.source, [int(b) for b in args.batches.split(",")], args.threads, args.rounds)
    header = (
        f"{'model':<10} {'graph':<8} {'batch':>5} {'torch eager us':>15} {'onnxruntime us':>15} "
        f"{'ORT speedup':>12}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r['model']:<10} {r['graph']:<8} {r['batch']:>5} {r['torch_us']:>15.1f} {r['ort_us']:>15.1f} "
            f"{r['speedup']:>11.2f}x"
        )
    result = {
        "bench": "export",
        "threads": args.threads,
        "rounds": args.rounds,
        "torch": torch.__version__,
        "onnxruntime": ort.__version__,
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(f".{args.out.name}.tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    os.replace(tmp, args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
