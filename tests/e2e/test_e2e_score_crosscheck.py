"""Score against the trainer: on the same images and weights, the served ELBO equals `vae evaluate
--per-image`'s within 1e-3 nats per image (same seeded posterior noise), and the served IWAE estimate
with k = 500 matches `vae evaluate -k 500` (torch's own noise) within its Monte Carlo error. One case
per likelihood, each a tiny model really trained on digits and exported by the real exporter."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from e2e_helpers import ServerThread, settings_for, stub_for, tensor

from protos.vae.v1 import vae_pb2

K = 500
N_IMAGES = 24
SEED = 7


def _train_export(tmp: Path, likelihood: str) -> tuple[Path, Path]:
    from exporter.export import export_model
    from trainer.config import ModelConfig, TrainConfig
    from trainer.train import train

    run = train(ModelConfig(input_shape=(1, 8, 8), latent_dim=4, arch="mlp", hidden=(32,),
                            likelihood=likelihood),
                TrainConfig(data="digits", out_dir=str(tmp / "run"), epochs=1, batch_size=64, lr=3e-3,
                            seed=0, grids=False, tensorboard=False))
    model = tmp / "model"
    export_model(run, model)
    return run, model


@pytest.fixture(scope="module", params=["bernoulli", "gaussian", "gaussian_learned", "continuous_bernoulli"])
def exported(request: pytest.FixtureRequest, tiny_run_dir: Path, tiny_model_dir: Path,
             tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path, Path]:
    if request.param == "bernoulli":  # the session's tiny model is a Bernoulli one
        return request.param, tiny_run_dir, tiny_model_dir
    run, model = _train_export(tmp_path_factory.mktemp(f"score-{request.param}"), request.param)
    return request.param, run, model


def _evaluate(run: Path, data: Path, out: Path) -> tuple[dict, dict[str, np.ndarray]]:
    per_image = out.with_suffix(".csv")
    proc = subprocess.run([sys.executable, "-m", "vae_cli.main", "evaluate", str(run), "--data", str(data),
                           "-k", str(K), "--seed", str(SEED), "--per-image", str(per_image),
                           "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    with per_image.open() as fh:
        rows = list(csv.DictReader(fh))
    cols = {k: np.array([float(r[k]) for r in rows]) for k in ("elbo", "log_px", "kl", "iwae")}
    return json.loads(out.read_text()), cols


def test_served_scores_match_vae_evaluate(exported: tuple[str, Path, Path], tmp_path: Path) -> None:
    from trainer.data import load_images

    likelihood, run, model_dir = exported
    x = load_images("digits")[100:100 + N_IMAGES]
    data = tmp_path / "x.npy"
    np.save(data, x)
    summary, cols = _evaluate(run, data, tmp_path / "eval.json")
    with ServerThread(settings_for(model_dir, max_batch_per_request=N_IMAGES * K)) as srv, \
            srv.channel(options=[("grpc.max_receive_message_length", 64 << 20)]) as ch:
        stub = stub_for(ch)
        one = stub.Score(vae_pb2.ScoreRequest(images=tensor(x), k=K, seed=SEED), timeout=60)
        two = stub.Score(vae_pb2.ScoreRequest(images=tensor(x), k=K, seed=SEED + 1), timeout=60)
    assert one.likelihood == likelihood and one.k == K
    elbo, iwae, iwae2 = np.array(one.elbo), np.array(one.iwae), np.array(two.iwae)
    # Same weights, same images, same noise: equal up to float32 arithmetic.
    worst = float(np.abs(elbo - cols["elbo"]).max())
    print(f"\n{likelihood}: max |served ELBO - evaluate ELBO| = {worst:.2e} nats; "
          f"max |served IWAE - evaluate per-image IWAE| = {float(np.abs(iwae - cols['iwae']).max()):.2e}")
    assert worst <= 1e-3
    np.testing.assert_allclose(np.array(one.kl), cols["kl"], atol=1e-3, rtol=0)
    np.testing.assert_allclose(iwae, cols["iwae"], atol=1e-3, rtol=0)
    # `vae evaluate`'s own IWAE NLL draws torch noise: equal in expectation. Its Monte Carlo error is
    # estimated from two served seeds: Var(mean_a - mean_b) = mean_i (a_i - b_i)^2 / n for independent noise.
    mc_err = math.sqrt(float(np.mean((iwae - iwae2) ** 2)) / N_IMAGES)
    gap = abs(float(-iwae.mean()) - summary["iwae_nll"])
    print(f"{likelihood}: served IWAE NLL {-iwae.mean():.4f}, vae evaluate {summary['iwae_nll']:.4f}, "
          f"gap {gap:.2e}, Monte Carlo error {mc_err:.2e}")
    assert gap <= 4 * mc_err + 1e-4
    # The bound is tighter than the ELBO (Burda et al. 2016, theorem 1), on average over images.
    assert iwae.mean() >= elbo.mean() - 1e-6
