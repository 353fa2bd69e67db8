"""Run-folder pictures: image grids with Pillow (no torchvision on CPU) and the training curves with
matplotlib's Agg backend. Both written atomically."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trainer.checkpoint import atomic_write_bytes
from trainer.model import VAE

__all__ = ["save_grid", "save_epoch_grids", "save_curves", "read_metrics"]


def save_grid(images: np.ndarray, path: Path, nrow: int = 8, scale: int = 0) -> None:
    """[N, C, H, W] in [0, 1] -> one PNG, `nrow` images per row, 1-pixel gaps. Small images are
    enlarged (nearest) to about 28 pixels so 8x8 digits stay visible."""
    from PIL import Image

    n, c, h, w = images.shape
    ncol = min(nrow, n)
    rows = (n + ncol - 1) // ncol
    canvas = np.ones((c, rows * (h + 1) + 1, ncol * (w + 1) + 1), dtype=np.float32)
    for i in range(n):
        r, k = divmod(i, ncol)
        canvas[:, 1 + r * (h + 1) : 1 + r * (h + 1) + h, 1 + k * (w + 1) : 1 + k * (w + 1) + w] = images[i]
    arr = (np.clip(canvas, 0, 1) * 255 + 0.5).astype(np.uint8)
    img = Image.fromarray(arr[0]) if c == 1 else Image.fromarray(arr[:3].transpose(1, 2, 0))
    factor = scale or max(1, 28 // max(h, w))
    if factor > 1:
        img = img.resize((img.width * factor, img.height * factor), Image.Resampling.NEAREST)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    atomic_write_bytes(path, lambda f: f.write(buf.getvalue()), durable=False)


@torch.no_grad()
def save_epoch_grids(model: VAE, x_val: torch.Tensor, seed: int, epoch: int, folder: Path) -> None:
    """8 validation images over their reconstructions (decoded posterior means), and 16 prior samples
    decoded from the same z every epoch, so the grids of successive epochs compare directly."""
    was_training = model.training
    model.eval()
    g = torch.Generator().manual_seed(seed + 1)
    x = x_val[:8]
    mu, _ = model.encode(x)
    pair = torch.cat([x, model.decode_mean(mu)]).float().cpu().numpy()
    z = torch.randn((16, model.cfg.latent_dim), generator=g).to(x.device)
    samples = model.decode_mean(z).float().cpu().numpy()
    model.train(was_training)
    save_grid(pair, folder / f"epoch{epoch:04d}-reconstructions.png", nrow=len(x))
    save_grid(samples, folder / f"epoch{epoch:04d}-samples.png", nrow=8)


def read_metrics(path: Path) -> list[dict[str, Any]]:
    rows = []
    if path.exists():
        for line in path.read_text().splitlines():
            if line.strip():
                rows.append(json.loads(line))
    return rows


def save_curves(metrics_path: Path, out: Path) -> None:
    """Reconstruction, KL, beta (per step) and active units (per epoch) in four panels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(metrics_path)
    steps = [r for r in rows if r.get("type") == "step"]
    epochs = [r for r in rows if r.get("type") == "epoch"]
    fig, axes = plt.subplots(2, 2, figsize=(10, 7))
    (a_rec, a_kl), (a_beta, a_au) = axes
    if steps:
        s = [r["step"] for r in steps]
        a_rec.plot(s, [r["rec"] for r in steps], lw=0.6, label="train")
        a_kl.plot(s, [r["kl"] for r in steps], lw=0.6, label="train")
        a_beta.plot(s, [r["beta"] for r in steps], lw=1.0)
    if epochs:
        s = [r["step"] for r in epochs]
        a_rec.plot(s, [r["val_rec"] for r in epochs], "o-", label="validation")
        a_kl.plot(s, [r["val_kl"] for r in epochs], "o-", label="validation")
        a_au.plot([r["epoch"] for r in epochs], [r["active_units"] for r in epochs], "o-")
        a_au.set_ylim(0, max(1, epochs[-1].get("latent_dim", 1)) + 0.5)
    a_rec.set_title("reconstruction (nats/image)")
    a_kl.set_title("KL (nats/image)")
    a_beta.set_title("beta")
    a_au.set_title("active units")
    for a in (a_rec, a_kl, a_beta):
        a.set_xlabel("step")
    a_au.set_xlabel("epoch")
    for a in (a_rec, a_kl):
        if a.lines:
            a.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    plt.close(fig)
    atomic_write_bytes(out, lambda f: f.write(buf.getvalue()), durable=False)
