"""The training loop for real on digits: run folder, monitoring, collapse alarm, NaN-skip, failures,
checkpoint safety, evaluation and the CLI's exit codes."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

import trainer.train as train_mod
from trainer.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from trainer.cli import evaluate_main, train_main
from trainer.config import ModelConfig, TrainConfig
from trainer.errors import CheckpointError, ConfigError, TrainingFailed
from trainer.train import train


def _rows(run: Path, kind: str) -> list[dict]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r["type"] == kind]


def _cfgs(tmp: Path, **kw: object) -> tuple[ModelConfig, TrainConfig]:
    m = ModelConfig(latent_dim=4, hidden=(64,))
    t = TrainConfig(out_dir=str(tmp), epochs=3, batch_size=32, lr=3e-3, tensorboard=False, progress=False)
    for k, v in kw.items():
        setattr(t, k, v)
    return m, t


def test_run_folder_contents(tiny_run_dir: Path) -> None:
    for name in ("config.json", "metrics.jsonl", "last.pt", "best.pt", "curves.png"):
        assert (tiny_run_dir / name).is_file(), name
    steps, epochs = _rows(tiny_run_dir, "step"), _rows(tiny_run_dir, "epoch")
    assert [r["step"] for r in steps] == list(range(len(steps)))
    assert {"rec", "kl", "beta", "neg_elbo", "grad_norm", "lr", "skipped"} <= set(steps[0])
    assert len(epochs) == 3
    for e in epochs:
        assert {"val_rec", "val_kl", "kl_per_dim", "active_units", "mi", "skipped_steps", "collapse"} <= set(
            e
        )
        assert len(e["kl_per_dim"]) == 4 and math.isclose(sum(e["kl_per_dim"]), e["val_kl"], rel_tol=1e-6)
    ck = load_checkpoint(tiny_run_dir / "last.pt")
    assert ck["step"] == len(steps) and ck["epoch"] == 3 and len(ck["data"]["fingerprint"]) == 64
    assert {"optimizer_state", "scheduler_state", "rng_state", "likelihood", "best_metric"} <= set(ck)
    cfg = json.loads((tiny_run_dir / "config.json").read_text())
    assert cfg["model_config"]["latent_dim"] == 4 and cfg["data"]["n_train"] == 1617


def test_healthy_run_silent_grids_written(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    m, t = _cfgs(tmp_path / "run", grids=True)
    with caplog.at_level("WARNING", logger="trainer"):
        run = train(m, t)
    epochs = _rows(run, "epoch")
    assert not any(e["collapse"] for e in epochs), [e["collapse_reason"] for e in epochs]
    assert "collapse" not in caplog.text
    assert epochs[-1]["active_units"] == 4 and epochs[-1]["val_kl"] > 0.5
    grids = sorted(p.name for p in (run / "grids").iterdir())
    assert "epoch0003-reconstructions.png" in grids and "epoch0003-samples.png" in grids


def test_collapse_alarm_fires_on_huge_beta(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    m, t = _cfgs(tmp_path / "run", beta=50.0, epochs=2)
    with caplog.at_level("WARNING", logger="trainer"):
        run = train(m, t)
    last = _rows(run, "epoch")[-1]
    assert last["collapse"] is True and last["active_units"] == 0
    assert "posterior collapse" in last["collapse_reason"] and "free bits" in last["collapse_reason"]
    assert "posterior collapse" in caplog.text and "KL warm-up" in caplog.text


def test_nan_step_is_skipped_and_counted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A non-finite loss is injected (a fault that real data would only produce by chance).
    real = train_mod.elbo_terms
    calls = {"n": 0}

    def faulty(*a: object, **kw: object) -> object:
        terms = real(*a, **kw)  # type: ignore[arg-type]
        calls["n"] += 1
        if calls["n"] in (4, 5):
            terms.loss = terms.loss * float("nan")
        return terms

    monkeypatch.setattr(train_mod, "elbo_terms", faulty)
    m, t = _cfgs(tmp_path / "run", epochs=1, max_skips=3)
    run = train(m, t)
    steps = _rows(run, "step")
    assert [r["step"] for r in steps if r["skipped"]] == [3, 4]
    assert steps[3]["loss"] is None  # NaN is written as null
    assert _rows(run, "epoch")[-1]["skipped_steps"] == 2
    ck = load_checkpoint(run / "last.pt")
    assert all(bool(torch.isfinite(v).all()) for v in ck["model_state"].values())


def test_k_nonfinite_steps_in_a_row_stop_the_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # A real divergence: SGD with an absurd learning rate overflows the weights within a few steps.
    m, t = _cfgs(tmp_path / "run", optimizer="sgd", lr=1e30, max_skips=3, epochs=1)
    with pytest.raises(TrainingFailed, match="3 non-finite steps in a row"):
        train(m, t)
    assert not (tmp_path / "run" / "last.pt").exists()  # nothing non-finite was saved
    code = train_main(
        [
            "--out",
            str(tmp_path / "cli"),
            "--optimizer",
            "sgd",
            "--lr",
            "1e30",
            "--max-skips",
            "2",
            "--hidden",
            "16",
            "--latent-dim",
            "2",
            "--epochs",
            "1",
            "--no-progress",
            "-q",
        ]
    )
    err = capsys.readouterr().err
    assert code == 1 and "non-finite steps in a row" in err and "Traceback" not in err


def test_save_refuses_nan_weights(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="non-finite"):
        save_checkpoint(tmp_path / "x.pt", {"model_state": {"w": torch.tensor([1.0, float("nan")])}})
    assert not list(tmp_path.iterdir())  # no file, no temp file left behind


def test_checkpoint_loading_is_safe(tmp_path: Path, tiny_run_dir: Path) -> None:
    good = (tiny_run_dir / "last.pt").read_bytes()
    (tmp_path / "trunc.pt").write_bytes(good[: len(good) // 2])
    torch.save({"weights": torch.zeros(2)}, tmp_path / "foreign.pt")
    ck = load_checkpoint(tiny_run_dir / "last.pt")
    ck["format_version"] = 99
    torch.save(ck, tmp_path / "future.pt")
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self) -> tuple:
            return (open, (str(marker), "w"))

    torch.save({"format": "vae-checkpoint", "x": Evil()}, tmp_path / "evil.pt")
    cases = {
        "trunc.pt": "truncated",
        "foreign.pt": "foreign",
        "future.pt": "format_version",
        "evil.pt": "weights_only",
        "missing.pt": "no such file",
    }
    for name, needle in cases.items():
        with pytest.raises(CheckpointError, match=needle):
            load_checkpoint(tmp_path / name)
    assert not marker.exists()  # the pickle's payload never ran
    assert evaluate_main([str(tmp_path / "evil.pt")]) == 2


def test_evaluate_tiny_model(tiny_run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "eval.json"
    assert evaluate_main([str(tiny_run_dir), "-k", "64", "--batch-size", "50", "--out", str(out)]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res == json.loads(out.read_text())
    assert res["subset"] == "val" and res["n_images"] == 180 and res["k"] == 64
    assert len(res["kl_per_dim"]) == 4 and 0 <= res["active_units"] <= 4
    # IWAE is a tighter bound than the ELBO (Burda et al. 2016): NLL <= -ELBO up to Monte Carlo noise
    assert 0 < res["iwae_nll"] <= res["neg_elbo"] + 0.5
    assert evaluate_main([str(tiny_run_dir), "-k", "4", "--subset", "all", "--range", "0:10"]) == 0
    assert json.loads(capsys.readouterr().out)["n_images"] == 10
    model = model_from_checkpoint(load_checkpoint(tiny_run_dir / "best.pt"))
    assert not model.training


def test_cli_bad_input_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert train_main(["--optimizer", "lion", "--out", str(tmp_path / "a")]) == 2
    assert "unknown optimizer" in capsys.readouterr().err
    assert train_main(["--epochs", "x"]) == 2  # argparse
    assert train_main(["--resume", str(tmp_path / "none")]) == 2
    assert "no such file" in capsys.readouterr().err
    assert evaluate_main([str(tmp_path / "none.pt")]) == 2
    assert evaluate_main(["x.pt", "-k", "0"]) == 2


def test_existing_run_needs_resume(tiny_run_dir: Path) -> None:
    _, t = _cfgs(tiny_run_dir)
    with pytest.raises(ConfigError, match="--resume"):
        train(ModelConfig(latent_dim=4, arch="mlp", hidden=(32,)), t)


def test_resume_can_extend_a_finished_run(tmp_path: Path) -> None:
    m, t = _cfgs(tmp_path / "run", epochs=1)
    train(m, t)
    steps = load_checkpoint(tmp_path / "run" / "last.pt")["step"]
    t.epochs = 2
    train(m, t, resume=True)
    ck = load_checkpoint(tmp_path / "run" / "last.pt")
    assert ck["epoch"] == 2 and ck["step"] == 2 * steps
    assert [r["epoch"] for r in _rows(tmp_path / "run", "epoch")] == [1, 2]


@pytest.mark.parametrize("likelihood", ["gaussian", "gaussian_learned", "continuous_bernoulli"])
def test_each_likelihood_trains(tmp_path: Path, likelihood: str) -> None:
    m = ModelConfig(latent_dim=4, hidden=(32,), likelihood=likelihood, sigma=0.3)
    _, t = _cfgs(tmp_path / "run", epochs=2, grids=False)
    run = train(m, t)
    steps = _rows(run, "step")
    first = sum(r["rec"] for r in steps[:5]) / 5
    last = sum(r["rec"] for r in steps[-5:]) / 5
    assert last < first
    state = load_checkpoint(run / "last.pt")["model_state"]
    if likelihood == "gaussian_learned":
        assert abs(float(state["likelihood.log_sigma"]) - math.log(0.3)) > 1e-3  # sigma was learned


def test_bf16_autocast_option_runs(tmp_path: Path) -> None:
    m, t = _cfgs(tmp_path / "run", epochs=1, bf16=True, grids=False)
    run = train(m, t)
    last = _rows(run, "epoch")[-1]
    assert math.isfinite(last["val_neg_elbo"]) and last["skipped_steps"] == 0


def test_best_checkpoint_is_the_best_epoch_even_when_saves_are_deferred(tmp_path: Path) -> None:
    m, t = _cfgs(tmp_path / "run", epochs=4, ckpt_every_s=1e9, grids=False)  # only the final save is due
    run = train(m, t)
    epochs = _rows(run, "epoch")
    best_row = min(epochs, key=lambda r: r["val_neg_elbo"])
    best = load_checkpoint(run / "best.pt")
    assert best["step"] == best_row["step"] and best["best_metric"] == pytest.approx(best_row["val_neg_elbo"])
    assert load_checkpoint(run / "last.pt")["step"] == epochs[-1]["step"]
