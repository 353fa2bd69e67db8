"""`vae train` and `vae evaluate`. Exit codes: 0 success, 1 the run failed, 2 bad input (flags, data,
checkpoint). Expected errors print one line on stderr, never a traceback."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Any

__all__ = ["HELP", "train_main", "evaluate_main", "build_train_parser", "build_evaluate_parser"]

# Resuming replays the stored configuration; only these may change (they do not alter the steps taken,
# except epochs/max-minutes which extend or shorten the plan).
_RESUMABLE = {
    "ckpt_every_s",
    "epochs",
    "max_minutes",
    "progress",
    "grids",
    "tensorboard",
    "num_threads",
    "ckpt_every",
    "curves_every_s",
}
_MODEL_ONLY_FROM_DATA = {"input_shape"}


HELP = {
    "latent_dim": "latent dimensions",
    "arch": "mlp | conv",
    "hidden": "mlp: hidden widths; conv: channels of each stride-2 block (comma-separated)",
    "activation": "relu | leaky_relu | elu | gelu | silu | tanh",
    "init": "weight init: kaiming (He) | xavier (Glorot)",
    "likelihood": "bernoulli | gaussian | gaussian_learned | continuous_bernoulli",
    "sigma": "sigma of the gaussian likelihood (initial value for gaussian_learned)",
    "res_blocks": "conv: residual blocks per stage",
    "dense": "conv: width of a fully connected layer before the latent heads (0 = none)",
    "data": "'digits', an IDX/.npz/.npy file, or a folder of IDX or PNG/JPEG files",
    "val_fraction": "fraction of the images held out for validation",
    "split": "random (seeded permutation) | tail (the last val-fraction of the images is validation)",
    "seed": "seed of weights, shuffling and sampling",
    "epochs": "epochs (an upper bound with --max-minutes)",
    "batch_size": "images per optimisation step (global, over all torchrun processes)",
    "optimizer": "adam | adamw | rmsprop | sgd",
    "lr": "peak learning rate",
    "weight_decay": "weight decay (decoupled for adamw)",
    "momentum": "momentum of sgd and rmsprop",
    "warmup_steps": "linear LR warm-up steps",
    "cosine": "cosine LR decay to --min-lr after the warm-up",
    "min_lr": "final LR of the cosine decay",
    "grad_clip": "clip the global gradient norm to this (0 = off)",
    "max_skips": "non-finite steps in a row that stop the run",
    "beta": "KL weight (after warm-up)",
    "beta_schedule": "constant | linear | cyclical | sigmoid",
    "beta_warmup_steps": "steps of the linear/sigmoid KL warm-up",
    "beta_cycles": "cyclical: number of cycles over the run",
    "beta_ratio": "cyclical: fraction of each cycle spent ramping beta up",
    "free_bits": "free bits: KL floor in nats (per dimension or total, 0 = off)",
    "free_bits_mode": "per_dim | total",
    "hflip": "augment: mirror each training image left-right with probability 1/2",
    "shift": "augment: move each training image by up to this many pixels, zero fill (0 = off)",
    "active_threshold": "a unit is active when Var_x(E[z_i|x]) exceeds this",
    "collapse_fraction": "collapse alarm when active units < this fraction of latent dims",
    "collapse_kl": "collapse alarm when the KL (nats) stays below this after warm-up",
    "mi_points": "validation images used by the mutual-information estimate",
    "grids": "write PNG grids of reconstructions and prior samples each epoch",
    "tensorboard": "log to RUN/tensorboard when tensorboard is installed",
    "progress": "tqdm progress bar",
    "curves_every_s": "redraw curves.png at most this often (and at the end)",
    "ckpt_every": "also write last.pt every N steps, inside epochs (0 = off)",
    "ckpt_every_s": "at an epoch end, write last.pt when this many seconds passed since the last save "
    "(0 = every epoch); the run's end is always saved",
    "max_minutes": "training time budget in minutes (0 = none); the epoch plan shrinks to fit",
    "device": "cpu | cuda | cuda:N | auto",
    "bf16": "bf16 autocast (GPU; works on CPU but is slower there)",
    "num_threads": "torch CPU threads (0 = automatic: the cores not busy with other work)",
}


def _tuple_int(s: str) -> tuple[int, ...]:
    try:
        vals = tuple(int(v) for v in s.replace("x", ",").split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {s!r}") from None
    if not vals:
        raise argparse.ArgumentTypeError("expected at least one integer")
    return vals


def _add_dataclass_flags(group: argparse._ArgumentGroup, cls: type, skip: set[str]) -> None:
    for f in fields(cls):
        if f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not MISSING else None
        kw: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS}
        if isinstance(default, bool):
            group.add_argument(
                flag,
                action=argparse.BooleanOptionalAction,
                help=f"{HELP.get(f.name, '')} (default {default})",
                **kw,
            )
            continue
        if isinstance(default, tuple):
            kw["type"] = _tuple_int
        elif isinstance(default, int):
            kw["type"] = int
        elif isinstance(default, float):
            kw["type"] = float
        else:
            kw["type"] = str
        shown = ",".join(map(str, default)) if isinstance(default, tuple) else default
        group.add_argument(flag, help=f"{HELP.get(f.name, '')} (default {shown})".replace("%", "%%"), **kw)


def build_train_parser() -> argparse.ArgumentParser:
    from trainer.config import ModelConfig, TrainConfig
    from trainer.presets import PRESETS

    p = argparse.ArgumentParser(
        prog="vae train",
        description="Train a VAE on images; writes a run folder "
        "(config.json, metrics.jsonl, last.pt, best.pt, grids/, curves.png).",
    )
    p.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        help="; ".join(f"{k}: {v[0]}" for k, v in PRESETS.items()).replace("%", "%%"),
    )
    p.add_argument(
        "--out", dest="out_dir", default=argparse.SUPPRESS, help="run folder (default runs/default)"
    )
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR exactly from last.pt")
    p.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors on stderr")
    _add_dataclass_flags(p.add_argument_group("model"), ModelConfig, _MODEL_ONLY_FROM_DATA)
    _add_dataclass_flags(p.add_argument_group("training"), TrainConfig, {"extra", "out_dir"})
    return p


def _setup_logging(quiet: bool) -> None:
    logging.basicConfig(
        level=logging.WARNING if quiet else logging.INFO, format="%(message)s", stream=sys.stderr, force=True
    )
    logging.getLogger("matplotlib").setLevel(logging.WARNING)
    logging.getLogger("PIL").setLevel(logging.WARNING)


def _parse(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace | int:
    try:
        return parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on bad flags and 0 on --help
        return int(exc.code or 0)


def _configs(ns: argparse.Namespace) -> tuple[Any, Any, bool]:
    from trainer.checkpoint import load_checkpoint
    from trainer.config import ModelConfig, TrainConfig
    from trainer.data import load_images
    from trainer.errors import ConfigError
    from trainer.presets import PRESETS

    given = {k: v for k, v in vars(ns).items() if k not in ("preset", "resume", "quiet")}
    mnames = {f.name for f in fields(ModelConfig)}
    if ns.resume:
        ck = load_checkpoint(Path(ns.resume) / "last.pt")
        bad = sorted(set(given) - _RESUMABLE - ({"out_dir"} if given.get("out_dir") == ns.resume else set()))
        if ns.preset or bad:
            raise ConfigError(
                "--resume replays the stored configuration; these flags cannot change: "
                + ", ".join(["--preset"] * bool(ns.preset) + ["--" + b.replace("_", "-") for b in bad])
            )
        tcfg = TrainConfig.from_dict({**ck["train_config"], **given, "out_dir": str(ns.resume)})
        return ModelConfig.from_dict(ck["model_config"]), tcfg, True
    m_over: dict[str, Any] = {}
    t_over: dict[str, Any] = {}
    if ns.preset:
        _, m_over, t_over = PRESETS[ns.preset]
        m_over, t_over = dict(m_over), dict(t_over)
    for k, v in given.items():
        (m_over if k in mnames else t_over)[k] = v
    tcfg = TrainConfig(**t_over)
    images = load_images(tcfg.data)
    m_over["input_shape"] = tuple(int(s) for s in images.shape[1:])
    return ModelConfig(**m_over), tcfg, False


def train_main(argv: list[str]) -> int:
    from trainer.errors import TrainerError, TrainingFailed

    ns = _parse(build_train_parser(), argv)
    if isinstance(ns, int):
        return ns
    _setup_logging(ns.quiet)
    try:
        mcfg, tcfg, resume = _configs(ns)
        from trainer.train import train

        out = train(mcfg, tcfg, resume=resume)
    except TrainingFailed as exc:
        print(f"vae train: failed: {exc}", file=sys.stderr)
        return 1
    except (TrainerError, ValueError) as exc:
        print(f"vae train: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        # A failed write (disk full, I/O error) at run time: checkpoints are written atomically, so the
        # last one on disk is intact and the run can continue from it.
        where = f" ({exc.filename})" if exc.filename else ""
        print(
            f"vae train: failed: {exc.strerror or exc}{where}; checkpoints are written atomically, "
            "the last one on disk is intact: "
            "continue with --resume",
            file=sys.stderr,
        )
        return 1
    except KeyboardInterrupt:
        print("vae train: interrupted; continue with --resume", file=sys.stderr)
        return 130
    print(out)
    return 0


def build_evaluate_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="vae evaluate",
        description="Evaluate a checkpoint; prints JSON: test "
        "negative ELBO, IWAE NLL (k importance samples), active units, per-dim KL.",
    )
    p.add_argument("checkpoint", help="a checkpoint file or a run folder (its best.pt)")
    p.add_argument("--data", help="images (default: the data the checkpoint was trained on)")
    p.add_argument(
        "--subset",
        choices=("val", "train", "all"),
        help="split of --data by the checkpoint's rule (seed, val_fraction, split); default: "
        "val when --data is the training data or omitted, otherwise all",
    )
    p.add_argument(
        "--range",
        dest="range_",
        metavar="START:END",
        help="then keep this slice, as fractions (0.9:1) or image indices (3600:4000)",
    )
    p.add_argument("-k", "--k", type=int, default=500, help="importance samples for IWAE (default 500)")
    p.add_argument("--batch-size", type=int, default=64, help="images per IWAE batch (default 64)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--prefer", choices=("best", "last"), default="best", help="checkpoint in a run folder")
    p.add_argument("--device", default="cpu", help="cpu | cuda | auto")
    p.add_argument("--num-threads", type=int, default=0, help="torch CPU threads (0 = the cores not busy)")
    p.add_argument("--out", help="also write the JSON to this file")
    p.add_argument("--per-image", metavar="FILE.csv",
                   help="also write per-image scores (index, elbo, log_px, kl, iwae; nats) with -k samples "
                        "on the posterior noise the served Score uses for the same --seed")
    return p


def _slice(n: int, spec: str) -> slice:
    from trainer.errors import ConfigError

    try:
        a, b = spec.split(":")
        fa = float(a) if a else 0.0
        fb = float(b) if b else float(n)
    except ValueError:
        raise ConfigError(f"--range must be START:END, got {spec!r}") from None
    frac = all(v <= 1.0 for v in (fa, fb)) and ("." in spec or spec in ("0:1",))
    lo, hi = (round(fa * n), round(fb * n)) if frac else (int(fa), int(fb))
    if not 0 <= lo < hi <= n:
        raise ConfigError(f"--range {spec} selects no images out of {n}")
    return slice(lo, hi)


def evaluate_main(argv: list[str]) -> int:
    from trainer.errors import TrainerError

    ns = _parse(build_evaluate_parser(), argv)
    if isinstance(ns, int):
        return ns
    _setup_logging(True)
    try:
        out = _evaluate(ns)
    except (TrainerError, ValueError) as exc:
        print(f"vae evaluate: error: {exc}", file=sys.stderr)
        return 2
    per_image = out.pop("_per_image", None)
    text = json.dumps(out, indent=2)
    print(text)
    if ns.per_image and per_image is not None:
        from trainer.checkpoint import atomic_write_bytes

        atomic_write_bytes(Path(ns.per_image), lambda f: f.write(per_image.encode()))
    if ns.out:
        from trainer.checkpoint import atomic_write_bytes

        atomic_write_bytes(Path(ns.out), lambda f: f.write((text + "\n").encode()))
    return 0


def _evaluate(ns: argparse.Namespace) -> dict[str, Any]:
    import torch

    from trainer.checkpoint import load_checkpoint, model_from_checkpoint, resolve_checkpoint
    from trainer.config import TrainConfig
    from trainer.data import load_images, split_indices
    from trainer.errors import ConfigError
    from trainer.evaluate import evaluate_model

    if ns.k < 1 or ns.batch_size < 1:
        raise ConfigError("-k and --batch-size must be >= 1")
    from trainer.runtime import auto_threads

    torch.set_num_threads(ns.num_threads if ns.num_threads > 0 else auto_threads())
    path = resolve_checkpoint(ns.checkpoint, prefer=f"{ns.prefer}.pt")
    ck = load_checkpoint(path)
    model = model_from_checkpoint(ck)
    tcfg = TrainConfig.from_dict(ck["train_config"])
    data = ns.data or tcfg.data
    images = load_images(data)
    if tuple(images.shape[1:]) != tuple(model.cfg.input_shape):
        raise ConfigError(
            f"{data}: images of shape {tuple(images.shape[1:])}, the model takes "
            f"{tuple(model.cfg.input_shape)}"
        )
    subset = ns.subset or ("val" if data == tcfg.data else "all")
    if subset != "all":
        tr, va = split_indices(len(images), tcfg.val_fraction, tcfg.seed, tcfg.split)
        images = images[va if subset == "val" else tr]
    if ns.range_:
        images = images[_slice(len(images), ns.range_)]
    if len(images) == 0:
        raise ConfigError(f"subset {subset} of {data} is empty")
    device = "cuda" if ns.device == "auto" and torch.cuda.is_available() else ns.device
    if device == "auto":
        device = "cpu"
    model.to(device)
    res = evaluate_model(
        model, images, k=ns.k, batch_size=ns.batch_size, seed=ns.seed, active_threshold=tcfg.active_threshold
    )
    extra: dict[str, Any] = {}
    if ns.per_image:
        from trainer.scoring import score_images

        sc = score_images(model, images, k=ns.k, seed=ns.seed, batch_size=ns.batch_size)
        rows = ["index,elbo,log_px,kl,iwae"] + [
            f"{i},{e:.9g},{r:.9g},{q:.9g},{w:.9g}"
            for i, (e, r, q, w) in enumerate(zip(sc.elbo, sc.log_px, sc.kl, sc.iwae, strict=True))]
        extra["_per_image"] = "\n".join(rows) + "\n"
    return {
        **extra,
        "checkpoint": str(path),
        "data": data,
        "subset": subset,
        "range": ns.range_,
        "step": int(ck["step"]),
        "epoch": int(ck["epoch"]),
        **res,
    }
