"""Epoch time of `vae train` (textbook MLP preset, all monitoring on) against a bare training loop of the
same model in the same process. Goal: ratio <= 1.2 (monitoring costs at most 20 %).

The trainer's epoch time is the wall time between consecutive epoch rows of its metrics.jsonl, so
one-off costs (imports, data loading, the final curves.png) do not count, while everything paid per epoch
does: per-step logging, gradient norms, tqdm, validation with active units and MI, grids, checkpoints.
Runs alternate (bare, trainer, bare, ...) and medians over all epochs are compared, to damp a shared
machine's noise; the minima are shown too (the least disturbed epoch of each).

    .venv/bin/python bench/train_speed.py [--data DIR] [--repeats 3] [--out .bench/train_speed.json]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from trainer.config import ModelConfig, TrainConfig  # noqa: E402
from trainer.data import load_images, split_images  # noqa: E402
from trainer.model import build_model  # noqa: E402
from trainer.presets import PRESETS  # noqa: E402
from trainer.train import train  # noqa: E402

__all__ = ["main"]

DEFAULT_DATA = ROOT.parent / "shared" / "data" / "fashion-mnist-4k"


def _data(spec: str | None, tmp: Path) -> str:
    if spec:
        return spec
    if DEFAULT_DATA.exists():
        return str(DEFAULT_DATA)
    # No real data at hand: 4,000 generated 28x28 images (blurred blobs) keep the shapes and costs right.
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:28, 0:28]
    c = rng.uniform(6, 22, size=(4000, 2, 1, 1))
    r = rng.uniform(3, 9, size=(4000, 1, 1))
    img = np.exp(-((yy - c[:, 0]) ** 2 + (xx - c[:, 1]) ** 2) / (2 * r**2))
    path = tmp / "generated.npy"
    np.save(path, (img * 255).astype(np.uint8))
    return str(path)


def _configs(data: str, out: Path, epochs: int) -> tuple[ModelConfig, TrainConfig]:
    _, m_over, t_over = PRESETS["textbook"]
    mcfg = ModelConfig(input_shape=(1, 28, 28), **m_over)
    tcfg = TrainConfig(data=data, out_dir=str(out), **{**t_over, "epochs": epochs})
    return mcfg, tcfg


def bare_epoch_seconds(mcfg: ModelConfig, tcfg: TrainConfig, epochs: int) -> list[float]:
    """The same model, optimiser, batches and loss with nothing else: the floor to compare with."""
    images = load_images(tcfg.data)
    x_train, _ = split_images(images, tcfg.val_fraction, tcfg.seed, tcfg.split)
    x = torch.from_numpy(x_train)
    torch.manual_seed(tcfg.seed)
    model = build_model(mcfg)
    opt = torch.optim.Adam(model.parameters(), lr=tcfg.lr)
    times = []
    for epoch in range(epochs):
        t0 = time.perf_counter()
        perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(epoch))
        for i in range(math.ceil(len(x) / tcfg.batch_size)):
            xb = x[perm[i * tcfg.batch_size : (i + 1) * tcfg.batch_size]]
            params, mu, logvar, _ = model(xb)
            kl = 0.5 * (mu * mu + logvar.exp() - 1 - logvar).sum(1).mean()
            loss = -model.likelihood.log_prob(xb, params).mean() + kl
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        times.append(time.perf_counter() - t0)
    return times


def trainer_epoch_seconds(mcfg: ModelConfig, data: str, out: Path, epochs: int) -> list[float]:
    """Wall time between consecutive epoch rows of metrics.jsonl: one whole epoch each (steps with their
    logging, validation with AU and MI, checkpoint, grids), without the run's one-off start and end."""
    _, tcfg = _configs(data, out, epochs)
    train(mcfg, tcfg)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    times = [r["time"] for r in rows if r["type"] == "epoch"]
    return [b - a for a, b in zip(times, times[1:], strict=False)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", help="28x28 images (default: ../shared/data/fashion-mnist-4k, else generated)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=8, help="epochs measured per run")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(ROOT / ".bench" / "train_speed.json"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    import logging

    logging.getLogger("trainer").setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        data = _data(args.data, tmp)
        mcfg, tcfg = _configs(data, tmp / "unused", args.epochs)
        bare: list[float] = []
        full: list[float] = []
        for r in range(args.repeats):
            bare += bare_epoch_seconds(mcfg, tcfg, args.epochs)
            full += trainer_epoch_seconds(mcfg, data, tmp / f"run{r}", args.epochs + 1)
    b, f = statistics.median(bare), statistics.median(full)
    result = {
        "data": data,
        "model": "mlp 784-400-20 bernoulli, adam 1e-3, batch 128",
        "threads": args.threads,
        "repeats": args.repeats,
        "bare_epoch_s": bare,
        "trainer_epoch_s": full,
        "bare_median_s": b,
        "trainer_median_s": f,
        "ratio": f / b,
        "ratio_of_minima": min(full) / min(bare),
        "goal": 1.2,
        "ok": f / b <= 1.2,
    }
    print(f"{'loop':<24}{'epochs':>8}{'median s':>10}{'min s':>8}")
    print(f"{'bare training loop':<24}{len(bare):>8}{b:>10.3f}{min(bare):>8.3f}")
    print(f"{'vae train (textbook)':<24}{len(full):>8}{f:>10.3f}{min(full):>8.3f}")
    print(
        f"ratio of medians {f / b:.3f}, of minima {min(full) / min(bare):.3f} (goal <= 1.2): "
        f"{'ok' if result['ok'] else 'ABOVE GOAL'}"
    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
