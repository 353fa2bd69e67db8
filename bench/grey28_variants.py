"""The grey28 search, reproducible: the preset's model trained for a fixed number of epochs with one change
at a time, including changes the trainer does not offer as flags (an IWAE training objective, learned
priors, dropout, weight averaging), each scored by its test IWAE NLL on the same split as the preset.

Why it exists: the preset misses its goal (<= 235 nats on Fashion-MNIST-4k) and these are the remedies
the VAE literature offers for the gap; this script measures each of them side by side so the claim that
none closes the gap can be checked (docs/trainer.md, Measured). Every run is seeded and single-threaded,
so two runs can share the 2-core machine without changing each other's numbers.

    .venv/bin/python bench/grey28_variants.py [--variants a,b] [--epochs 100] [--k 100] [--parallel 2]

Each variant prints one JSON line; `--out` writes them all. Without ../shared/data generated images are
used (the costs stay right; the NLL figures then mean nothing).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from torch import nn  # noqa: E402

from bench.train_speed import _data  # noqa: E402
from trainer.augment import augment_batch  # noqa: E402
from trainer.config import ModelConfig  # noqa: E402
from trainer.data import load_images, split_images  # noqa: E402
from trainer.model import VAE, build_model  # noqa: E402
from trainer.objective import kl_per_dim, lr_at  # noqa: E402
from trainer.presets import PRESETS  # noqa: E402

__all__ = ["main", "VARIANTS"]

_LOG_2PI = math.log(2.0 * math.pi)

# name -> overrides of the baseline below; the baseline is the grey28 preset's model and optimiser.
VARIANTS: dict[str, dict[str, Any]] = {
    "baseline": {},
    "iwae4": {"iw": 4},  # IWAE bound with 4 samples as the objective (Burda et al. 2016)
    "mog64": {"prior": "mog", "components": 64},  # learned mixture-of-Gaussians prior
    "vamp100": {"prior": "vamp", "components": 100},  # VampPrior, 100 pseudo-inputs (Tomczak & Welling 2018)
    "dropout0.3": {"dropout": 0.3},  # dropout after the dense layers of encoder and decoder
    "dense256-dropout0.1": {"dense": 256, "dropout": 0.1},
    "wd0.05": {"weight_decay": 0.05},
    "z64": {"latent_dim": 64},
    "wide64-128": {"hidden": (64, 128)},
    "resblocks2": {"res_blocks": 2},
    "batch32-lr2e-3": {"batch_size": 32, "lr": 2e-3},
    "shift1": {"shift": 1},  # move each training image by up to 1 pixel (the trainer's --shift 1)
    "upsample-conv": {"upsample": True},  # nearest upsampling + 3x3 conv instead of transposed convs
}


def _baseline() -> dict[str, Any]:
    _, m, t = PRESETS["grey28"]
    return {
        "hidden": tuple(m["hidden"]),
        "dense": m["dense"],
        "latent_dim": m["latent_dim"],
        "res_blocks": m["res_blocks"],
        "activation": m["activation"],
        "lr": t["lr"],
        "weight_decay": t["weight_decay"],
        "batch_size": t["batch_size"],
        "warmup_steps": t["warmup_steps"],
        "min_lr": t["min_lr"],
        "beta_warmup_steps": t["beta_warmup_steps"],
        "free_bits": t["free_bits"],
        "grad_clip": t["grad_clip"],
        "iw": 1,
        "prior": "standard",
        "components": 0,
        "dropout": 0.0,
        "ema": 0.999,
        "shift": 0,
        "upsample": False,
    }


class _Prior(nn.Module):
    """log p(z): standard normal, a learned mixture of K diagonal Gaussians, or a VampPrior (the mixture of
    the encoder's posteriors at K learned pseudo-inputs)."""

    def __init__(self, kind: str, k: int, dim: int, init_images: torch.Tensor) -> None:
        super().__init__()
        self.kind = kind
        if kind == "mog":
            self.means = nn.Parameter(torch.randn(k, dim))
            self.logvars = nn.Parameter(torch.zeros(k, dim))
        elif kind == "vamp":
            self.pseudo = nn.Parameter(torch.logit(init_images[:k].clamp(0.02, 0.98)))
        if kind != "standard":
            self.logits = nn.Parameter(torch.zeros(k))

    def log_prob(self, z: torch.Tensor, model: VAE) -> torch.Tensor:
        if self.kind == "standard":
            return (-0.5 * (_LOG_2PI + z * z)).sum(-1)
        if self.kind == "mog":
            mk, lk = self.means, self.logvars
        else:
            mk, lk = model.encode(torch.sigmoid(self.pseudo))
        zz = z.unsqueeze(-2)
        comp = (-0.5 * (_LOG_2PI + lk + (zz - mk) ** 2 * torch.exp(-lk))).sum(-1)
        return torch.logsumexp(comp + torch.log_softmax(self.logits, 0), -1)


def _with_dropout(seq: nn.Sequential, p: float) -> nn.Sequential:
    """Dropout after every activation that follows a Linear layer (the dense part of the conv VAE)."""
    mods, out = list(seq), []
    for i, mod in enumerate(mods):
        out.append(mod)
        if p > 0 and i > 0 and isinstance(mods[i - 1], nn.Linear) and not isinstance(mod, nn.Linear):
            out.append(nn.Dropout(p))
    return nn.Sequential(*out)


def _upsample_conv(seq: nn.Sequential) -> nn.Sequential:
    """Each stride-2 transposed conv replaced by nearest 2x upsampling and a 3x3 conv (no checkerboard
    overlap, Odena et al. 2016); only for sizes that double exactly (28 -> 14 -> 7)."""
    out: list[nn.Module] = []
    for mod in seq:
        if isinstance(mod, nn.ConvTranspose2d):
            conv = nn.Conv2d(mod.in_channels, mod.out_channels, 3, padding=1)
            nn.init.kaiming_uniform_(conv.weight, nonlinearity="relu")
            nn.init.zeros_(conv.bias)
            out += [nn.Upsample(scale_factor=2, mode="nearest"), conv]
        else:
            out.append(mod)
    return nn.Sequential(*out)


def _log_q(z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    return (-0.5 * (_LOG_2PI + logvar + (z - mu) ** 2 * torch.exp(-logvar))).sum(-1)


def _loss(model: VAE, prior: _Prior, x: torch.Tensor, c: dict[str, Any], beta: float) -> torch.Tensor:
    mu, logvar = model.encode(x)
    if c["iw"] > 1:  # -IWAE bound; beta weighs log p(z) - log q(z|x) inside each weight during warm-up
        b, d, k = mu.shape[0], mu.shape[1], c["iw"]
        z = mu[:, None] + torch.exp(0.5 * logvar)[:, None] * torch.randn(b, k, d)
        xr = x[:, None].expand(b, k, *x.shape[1:]).reshape(b * k, *x.shape[1:])
        log_px = model.likelihood.log_prob(xr, model.decode(z.reshape(b * k, d))).reshape(b, k)
        log_w = log_px + beta * (prior.log_prob(z, model) - _log_q(z, mu[:, None], logvar[:, None]))
        return -(torch.logsumexp(log_w, 1) - math.log(k)).mean()
    z = model.reparameterize(mu, logvar)
    rec = -model.likelihood.log_prob(x, model.decode(z)).mean()
    if prior.kind == "standard":  # closed-form KL with per-dimension free bits, as the trainer does
        return rec + beta * torch.clamp(kl_per_dim(mu, logvar).mean(0), min=c["free_bits"]).sum()
    kl = (_log_q(z, mu, logvar) - prior.log_prob(z, model)).mean()  # one-sample KL, free bits on the total
    return rec + beta * torch.clamp(kl, min=c["free_bits"] * mu.shape[1])


@torch.no_grad()
def _score(model: VAE, prior: _Prior, x_val: torch.Tensor, x_train: torch.Tensor, k: int) -> dict[str, Any]:
    model.eval()
    g = torch.Generator().manual_seed(1)
    nll = []
    for i in range(0, len(x_val), 64):
        x = x_val[i : i + 64]
        b = len(x)
        mu, logvar = model.encode(x)
        log_w = []
        for _ in range(0, k, 25):  # k is rounded up to a multiple of 25
            eps = torch.randn((b, 25, mu.shape[1]), generator=g)
            z = mu[:, None] + torch.exp(0.5 * logvar)[:, None] * eps
            xr = x[:, None].expand(b, 25, *x.shape[1:]).reshape(b * 25, *x.shape[1:])
            log_px = model.likelihood.log_prob(xr, model.decode(z.reshape(b * 25, -1))).reshape(b, 25)
            log_q = _log_q(z, mu[:, None], logvar[:, None])
            log_w.append((log_px + prior.log_prob(z, model) - log_q).double())
        lw = torch.cat(log_w, 1)
        nll.append(-(torch.logsumexp(lw, 1) - math.log(lw.shape[1])))

    def neg_elbo(x: torch.Tensor) -> float:  # one posterior sample; KL against the model's own prior
        mu, logvar = model.encode(x)
        z = model.reparameterize(mu, logvar, generator=g)
        kl = _log_q(z, mu, logvar) - prior.log_prob(z, model)
        return float((-model.likelihood.log_prob(x, model.decode(z)) + kl).mean())

    mu, _ = model.encode(x_val)
    return {
        "test_iwae_nll": round(float(torch.cat(nll).mean()), 2),
        "test_neg_elbo": round(neg_elbo(x_val), 2),
        "train_neg_elbo": round(neg_elbo(x_train[:1000]), 2),
        "active_units": int((mu.var(0) > 0.01).sum()),
    }


def run_variant(name: str, data: str, epochs: int, k: int, seed: int = 0) -> dict[str, Any]:
    """Train one variant for `epochs` epochs (LR warm-up + cosine over them) and score the last weights
    and their exponential moving average."""
    c = {**_baseline(), **VARIANTS[name]}
    torch.manual_seed(seed)
    train_np, val_np = split_images(load_images(data), 0.1, seed, "tail")
    x_train, x_val = torch.from_numpy(train_np), torch.from_numpy(val_np)
    mcfg = ModelConfig(
        input_shape=tuple(x_train.shape[1:]),  # type: ignore[arg-type]
        arch="conv",
        hidden=c["hidden"],
        dense=c["dense"],
        latent_dim=c["latent_dim"],
        res_blocks=c["res_blocks"],
        activation=c["activation"],
        likelihood="bernoulli",
    )
    model = build_model(mcfg)
    model.encoder = _with_dropout(model.encoder, c["dropout"])
    model.decoder = _with_dropout(model.decoder, c["dropout"])
    if c["upsample"]:
        model.decoder = _upsample_conv(model.decoder)
    init = x_train[torch.randperm(len(x_train))[: max(1, c["components"])]]
    prior = _Prior(c["prior"], c["components"], c["latent_dim"], init)
    params = list(model.parameters()) + list(prior.parameters())
    avg_model, avg_prior = copy.deepcopy(model), copy.deepcopy(prior)
    avg_params = list(avg_model.parameters()) + list(avg_prior.parameters())
    opt = torch.optim.AdamW(params, lr=c["lr"], weight_decay=c["weight_decay"])
    bs = c["batch_size"]
    steps_per_epoch = math.ceil(len(x_train) / bs)
    total = epochs * steps_per_epoch
    step, t0 = 0, time.monotonic()
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(x_train))
        for b in range(steps_per_epoch):
            x = x_train[perm[b * bs : (b + 1) * bs]]
            if c["shift"]:
                g = torch.Generator().manual_seed(seed * 1_000_003 + step)
                x = augment_batch(x, hflip=False, shift=c["shift"], generator=g)
            lr = lr_at(
                step,
                lr=c["lr"],
                warmup_steps=c["warmup_steps"],
                cosine=True,
                total_steps=total,
                min_lr=c["min_lr"],
            )
            for group in opt.param_groups:
                group["lr"] = lr
            beta = min(1.0, step / max(1, c["beta_warmup_steps"]))
            loss = _loss(model, prior, x, c, beta)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, c["grad_clip"])
            opt.step()
            step += 1
            with torch.no_grad():  # Polyak averaging with the usual (1 + t) / (10 + t) ramp
                decay = min(c["ema"], (1 + step) / (10 + step))
                for pa, pm in zip(avg_params, params, strict=True):
                    pa.lerp_(pm, 1 - decay)
    seconds = time.monotonic() - t0
    return {
        "variant": name,
        "changes": {key: list(v) if isinstance(v, tuple) else v for key, v in VARIANTS[name].items()},
        "epochs": epochs,
        "steps": step,
        "train_seconds_1_thread": round(seconds, 1),
        "k": 25 * math.ceil(k / 25),
        "last": _score(model, prior, x_val, x_train, k),
        "averaged": _score(avg_model, avg_prior, x_val, x_train, k),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated: " + ", ".join(VARIANTS))
    ap.add_argument("--epochs", type=int, default=10, help="epochs per variant (the search used 100)")
    ap.add_argument("--k", type=int, default=100, help="importance samples of the test IWAE NLL")
    ap.add_argument("--data", default=None, help="default ../shared/data/fashion-mnist-4k when present")
    ap.add_argument("--parallel", type=int, default=2, help="variants trained at once, one thread each")
    ap.add_argument("--out", default=".bench/grey28_variants.json")
    ap.add_argument("--one", help=argparse.SUPPRESS)  # internal: train one variant in this process
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        data = _data(a.data, Path(tmp))
        if a.one:
            print(json.dumps(run_variant(a.one, data, a.epochs, a.k)), flush=True)
            return 0
        names = [v.strip() for v in a.variants.split(",") if v.strip()]
        unknown = [v for v in names if v not in VARIANTS]
        if unknown:
            print(f"unknown variants {unknown}; expected some of {', '.join(VARIANTS)}", file=sys.stderr)
            return 2
        results: list[dict[str, Any]] = []
        pending = list(names)
        running: list[subprocess.Popen[str]] = []
        while pending or running:
            while pending and len(running) < max(1, a.parallel):
                cmd = [
                    sys.executable,
                    __file__,
                    "--one",
                    pending.pop(0),
                    "--epochs",
                    str(a.epochs),
                    "--k",
                    str(a.k),
                    "--data",
                    data,
                ]
                running.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True))
            done = [p for p in running if p.poll() is not None]
            if not done:
                time.sleep(0.5)
                continue
            for proc in done:  # whichever variant finishes first frees its slot
                running.remove(proc)
                out, _ = proc.communicate()
                if proc.returncode != 0:
                    print(f"a variant failed with exit code {proc.returncode}", file=sys.stderr)
                    for other in running:
                        other.kill()
                    return 1
                row = json.loads(out.strip().splitlines()[-1])
                print(json.dumps(row), flush=True)
                results.append(row)
    out_path = Path(a.out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = out_path.with_suffix(".tmp")
    tmp_path.write_text(json.dumps(results, indent=1) + "\n")
    tmp_path.replace(out_path)
    head = ("variant", "test IWAE", "(averaged)", "test -ELBO", "train -ELBO", "AU")
    print(f"{head[0]:<22} {head[1]:>10} {head[2]:>10} {head[3]:>11} {head[4]:>12} {head[5]:>4}")
    for r in sorted(results, key=lambda r: names.index(r["variant"])):
        last, avg = r["last"], r["averaged"]
        print(
            f"{r['variant']:<22} {last['test_iwae_nll']:>10.2f} {avg['test_iwae_nll']:>10.2f} "
            f"{last['test_neg_elbo']:>11.2f} {last['train_neg_elbo']:>12.2f} {last['active_units']:>4}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
