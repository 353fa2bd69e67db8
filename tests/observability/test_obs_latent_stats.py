"""The windowed latent statistics on constructed arrays: each figure checked against a direct computation."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service.latent_stats import (
    LatentReference,
    LatentWindow,
    ValueHistogram,
    finite_rows,
    gaussian_kl_diag,
    kl_per_dim,
)


def _ref(d: int, **over: object) -> dict:
    block = {"n_images": 500, "mu_mean": [0.0] * d, "mu_var": [1.0] * d, "posterior_var_mean": [0.1] * d,
             "kl_per_dim": [1.0] * d, "active_units": d, "active_threshold": 0.01,
             "kl_per_sample": {"mean": 4.0, "p50": 3.0, "p90": 6.0, "p99": 8.0}}
    block.update(over)
    return block


def test_kl_per_dim_matches_closed_form_and_is_zero_at_prior() -> None:
    mu = np.array([[0.0, 1.0, -2.0]])
    logvar = np.array([[0.0, math.log(0.5), math.log(4.0)]])
    got = kl_per_dim(mu, logvar)
    want = [0.0, 0.5 * (1 + 0.5 - 1 - math.log(0.5)), 0.5 * (4 + 4 - 1 - math.log(4.0))]
    np.testing.assert_allclose(got[0], want, rtol=1e-12)


def test_gaussian_kl_diag_matches_univariate_formula() -> None:
    got = gaussian_kl_diag(np.array([1.0]), np.array([2.0]), np.array([0.0]), np.array([1.0]))
    assert got[0] == pytest.approx(0.5 * (math.log(1 / 2) + (2 + 1) / 1 - 1))
    same = gaussian_kl_diag(np.array([0.3]), np.array([0.7]), np.array([0.3]), np.array([0.7]))
    assert same[0] == pytest.approx(0.0, abs=1e-15)


def test_long_half_life_window_equals_plain_statistics() -> None:
    rng = np.random.default_rng(1)
    # float32 inputs, as the encoder produces: the window computes per image in float32 and merges
    # batch sums in float64, so it matches a float64 computation to float32 precision.
    mu = rng.normal(0.5, 2.0, size=(300, 5)).astype(np.float32).astype(np.float64)
    logvar = rng.normal(-1.0, 0.3, size=(300, 5)).astype(np.float32).astype(np.float64)
    win = LatentWindow(5, half_life=1e12)
    for start in range(0, 300, 37):   # uneven batches: the merge must not depend on how rows arrive
        win.update(mu[start:start + 37], logvar[start:start + 37])
    snap = win.snapshot()
    assert snap.images_total == 300
    np.testing.assert_allclose(snap.mu_mean, mu.mean(axis=0), rtol=1e-5)
    np.testing.assert_allclose(snap.mu_var, mu.var(axis=0), rtol=1e-5)
    np.testing.assert_allclose(snap.posterior_var_mean, np.exp(logvar).mean(axis=0), rtol=1e-5)
    np.testing.assert_allclose(snap.kl_per_dim, kl_per_dim(mu, logvar).mean(axis=0), rtol=1e-5)
    assert snap.kl_mean == pytest.approx(kl_per_dim(mu, logvar).sum(axis=1).mean(), rel=1e-5)


def test_decay_weights_match_the_documented_formula_whatever_the_batching() -> None:
    rng = np.random.default_rng(2)
    mu = rng.normal(size=(90, 3)).astype(np.float32).astype(np.float64)
    logvar = np.zeros((90, 3))
    h = 20.0
    w = 2.0 ** (-(np.arange(89, -1, -1)) / h)
    mean = (w[:, None] * mu).sum(0) / w.sum()
    var = (w[:, None] * (mu - mean) ** 2).sum(0) / w.sum()
    a, b = LatentWindow(3, half_life=h), LatentWindow(3, half_life=h)
    a.update(mu, logvar)
    for chunk in np.array_split(np.arange(90), 7):
        b.update(mu[chunk], logvar[chunk])
    for win in (a, b):
        snap = win.snapshot()
        assert snap.window_images == pytest.approx(w.sum())
        np.testing.assert_allclose(snap.mu_mean, mean, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(snap.mu_var, var, rtol=1e-5)


def test_window_forgets_the_past() -> None:
    win = LatentWindow(2, half_life=50)
    win.update(np.full((1000, 2), 5.0), np.zeros((1000, 2)))
    win.update(np.zeros((1000, 2)), np.zeros((1000, 2)))
    # 1000 images = 20 half-lives later the old mean weighs 2^-20 of the total.
    assert np.abs(win.snapshot().mu_mean).max() < 1e-4


def test_active_units_collapse_and_warm_up() -> None:
    ref = LatentReference.from_manifest(_ref(4), 4)
    win = LatentWindow(4, half_life=200, reference=ref, min_images=50)
    rng = np.random.default_rng(3)
    win.update(np.zeros((10, 4)), np.zeros((10, 4)))
    early = win.snapshot()
    assert not early.ready and not early.collapse     # 10 images: too few to judge
    win.update(np.zeros((200, 4)), np.zeros((200, 4)))  # every image encodes to the same point
    snap = win.snapshot()
    assert snap.ready and snap.active_units == 0 and snap.collapse
    healthy = LatentWindow(4, half_life=200, reference=ref, min_images=50)
    healthy.update(rng.normal(size=(400, 4)), np.full((400, 4), -2.0))
    snap = healthy.snapshot()
    assert snap.active_units == 4 and not snap.collapse
    # Two of four dims alive: 2 >= 0.5 * 4, not collapse; one alive is.
    half = np.concatenate([rng.normal(size=(400, 2)), np.zeros((400, 2))], axis=1)
    w2 = LatentWindow(4, half_life=200, reference=ref, min_images=50)
    w2.update(half, np.zeros((400, 4)))
    assert w2.snapshot().active_units == 2 and not w2.snapshot().collapse
    w1 = LatentWindow(4, half_life=200, reference=ref, min_images=50)
    w1.update(half[:, [0, 2, 3, 3]], np.zeros((400, 4)))
    assert w1.snapshot().active_units == 1 and w1.snapshot().collapse


def test_without_reference_only_total_collapse_counts() -> None:
    win = LatentWindow(3, half_life=100, min_images=10)
    win.update(np.zeros((50, 3)), np.zeros((50, 3)))
    snap = win.snapshot()
    assert snap.collapse and snap.drift_score is None and snap.drift_per_dim is None


def test_drift_low_for_reference_like_data_and_high_for_shifted() -> None:
    rng = np.random.default_rng(4)
    ref = LatentReference.from_manifest(_ref(8, active_units=8), 8)
    same = LatentWindow(8, half_life=500, reference=ref)
    same.update(rng.normal(size=(2000, 8)), np.zeros((2000, 8)))
    shifted = LatentWindow(8, half_life=500, reference=ref)
    shifted.update(rng.normal(1.5, 0.5, size=(2000, 8)), np.zeros((2000, 8)))
    low, high = same.snapshot().drift_score, shifted.snapshot().drift_score
    assert low is not None and high is not None
    assert low < 0.01
    # Per dim: 0.5 * (log(1/0.25) + 0.25 + 1.5^2 - 1) = 1.44 nats; the sum is divided by 8 active units.
    assert high == pytest.approx(0.5 * (math.log(4) + 0.25 + 2.25 - 1), rel=0.1)


def test_drift_floor_ignores_float_noise_in_inactive_dims() -> None:
    ref = LatentReference.from_manifest(_ref(2, mu_var=[1.0, 1e-7], active_units=1), 2)
    rng = np.random.default_rng(5)
    win = LatentWindow(2, half_life=500, reference=ref)
    mu = np.stack([rng.normal(size=1000), rng.normal(0, 3e-4, size=1000)], axis=1)
    win.update(mu, np.zeros((1000, 2)))
    assert win.snapshot().drift_score < 0.01


@pytest.mark.parametrize(("over", "message"), [
    ({"mu_mean": [0.0]}, "mu_mean has shape [1], expected [3]"),
    ({"mu_var": "x"}, "mu_var is not a list of numbers"),
    ({"posterior_var_mean": [0.1, 0.0, 0.1]}, "variances must be non-negative"),
    ({"active_units": 9}, "active_units must be in [0, 3]"),
    ({"kl_per_dim": [1.0, float("nan"), 1.0]}, "kl_per_dim holds non-finite values"),
])
def test_reference_validation_names_the_problem(over: dict, message: str) -> None:
    with pytest.raises(ValueError, match=None) as info:
        LatentReference.from_manifest(_ref(3, **over), 3)
    assert message in str(info.value)


def test_reference_missing_field() -> None:
    block = _ref(3)
    del block["mu_var"]
    with pytest.raises(ValueError, match="missing field 'mu_var'"):
        LatentReference.from_manifest(block, 3)


def test_histogram_uses_le_semantics_and_cumulates() -> None:
    h = ValueHistogram([1.0, 2.0, 4.0])
    h.observe_many(np.array([0.5, 1.0, 1.5, 2.0, 3.0, 10.0]))
    buckets, total, count = h.snapshot()
    assert buckets == [("1.0", 2), ("2.0", 4), ("4.0", 5), ("+Inf", 6)]
    assert total == pytest.approx(18.0) and count == 6


def test_finite_rows() -> None:
    a = np.array([[0.0, 1.0], [np.nan, 1.0], [1.0, 1.0]])
    b = np.array([[0.0, 0.0], [0.0, 0.0], [np.inf, 0.0]])
    assert finite_rows(a, b).tolist() == [True, False, False]


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 60), st.integers(1, 5), st.floats(1.0, 1e4), st.integers(0, 2**31 - 1))
def test_merge_is_batching_invariant(n: int, parts: int, h: float, seed: int) -> None:
    rng = np.random.default_rng(seed)
    mu = rng.normal(size=(n, 2)) * 3
    lv = rng.normal(size=(n, 2))
    one, many = LatentWindow(2, half_life=h), LatentWindow(2, half_life=h)
    one.update(mu, lv)
    for chunk in np.array_split(np.arange(n), parts):
        many.update(mu[chunk], lv[chunk])
    a, b = one.snapshot(), many.snapshot()
    np.testing.assert_allclose(a.mu_mean, b.mu_mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(a.mu_var, b.mu_var, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(a.kl_per_dim, b.kl_per_dim, rtol=1e-5, atol=1e-6)
