"""Score, Interpolate, Traverse and Edit against a real server serving the really trained tiny model:
the properties the issue asks for, the validation of every new field, limits, deadlines, auth, the
model/version fields, old model folders, and the score metrics."""

from __future__ import annotations

import json
import shutil

import grpc
import numpy as np
import pytest
from e2e_helpers import ServerThread, array, settings_for, stub_for, tensor
from prometheus_client import CollectorRegistry
from prometheus_client.utils import floatToGoString

from protos.vae.v1 import vae_pb2

LINEAR, SPHERICAL = vae_pb2.INTERPOLATION_METHOD_LINEAR, vae_pb2.INTERPOLATION_METHOD_SPHERICAL


@pytest.fixture(scope="module")
def digits() -> np.ndarray:
    from trainer.data import load_images

    return load_images("digits")[:16]


def _ep(image: np.ndarray | None = None, z: np.ndarray | None = None) -> vae_pb2.Endpoint:
    return vae_pb2.Endpoint(image=tensor(image)) if image is not None else vae_pb2.Endpoint(z=tensor(z))


def _code(fn, request) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as err:
        fn(request, timeout=10)
    return err.value.code(), err.value.details()


def test_score_is_deterministic_and_consistent(stub, digits):
    req = vae_pb2.ScoreRequest(images=tensor(digits[:4]), k=8, seed=3)
    a, b = stub.Score(req), stub.Score(req)
    assert list(a.elbo) == list(b.elbo) and list(a.iwae) == list(b.iwae)
    assert a.k == 8 and len(a.elbo) == len(a.iwae) == 4 and a.likelihood == "bernoulli"
    np.testing.assert_allclose(np.array(a.elbo), np.array(a.log_px) - np.array(a.kl), atol=1e-9)
    assert (np.array(a.kl) >= 0).all()
    one = stub.Score(vae_pb2.ScoreRequest(images=tensor(digits[:4]), seed=3))
    assert one.k == 1 and len(one.iwae) == 0  # the IWAE estimate only with k > 1
    # uint8 images score as the same images in [0, 1]
    u8 = (digits[:4] * 255).round().astype(np.uint8)
    c = stub.Score(vae_pb2.ScoreRequest(images=tensor(u8), k=8, seed=3))
    np.testing.assert_allclose(np.array(c.elbo), np.array(a.elbo), atol=0.5)
    assert a.model and a.version  # what produced the reply


def test_interpolation_endpoints_are_reconstructions(stub, digits):
    a, b = digits[0], digits[1]
    rec = array(stub.Reconstruct(vae_pb2.ReconstructRequest(images=tensor(digits[:2]))).images)
    mu = array(stub.Encode(vae_pb2.EncodeRequest(images=tensor(digits[:2]))).mu)
    for method in (LINEAR, SPHERICAL):
        r = stub.Interpolate(vae_pb2.InterpolateRequest(a=_ep(a), b=_ep(b), steps=7, method=method))
        images, z = array(r.images), array(r.z)
        assert images.shape == (7, 1, 8, 8) and z.shape == (7, 4)
        assert z[0].tobytes() == mu[0].tobytes() and z[-1].tobytes() == mu[1].tobytes()
        np.testing.assert_allclose(images[[0, -1]], rec, atol=1e-6)


def test_slerp_keeps_the_norm_between_the_endpoints(stub):
    rng = np.random.default_rng(0)
    for _ in range(5):
        za, zb = rng.standard_normal(4).astype(np.float32) * 2, rng.standard_normal(4).astype(np.float32)
        r = stub.Interpolate(vae_pb2.InterpolateRequest(a=_ep(z=za), b=_ep(z=zb), steps=9, method=SPHERICAL))
        norms = np.linalg.norm(array(r.z), axis=1)
        lo, hi = sorted((np.linalg.norm(za), np.linalg.norm(zb)))
        assert (norms >= lo - 1e-5).all() and (norms <= hi + 1e-5).all(), norms
        lin = stub.Interpolate(vae_pb2.InterpolateRequest(a=_ep(z=za), b=_ep(z=-za), steps=9, method=LINEAR))
        assert np.linalg.norm(array(lin.z)[4]) < 1e-5  # the straight line crosses the centre; slerp does not


def test_traversal_changes_exactly_one_dimension_per_row(stub, digits, model_dir):
    mu = array(stub.Encode(vae_pb2.EncodeRequest(images=tensor(digits[:1]))).mu)[0]
    r = stub.Traverse(vae_pb2.TraverseRequest(base=_ep(digits[0]), dims=[2, 0], steps=5, low=-2, high=2))
    z = array(r.z).reshape(2, 5, 4)
    assert list(r.dims) == [2, 0] and array(r.images).shape == (10, 1, 8, 8)
    for row, dim in enumerate(r.dims):
        changed = np.nonzero((z[row] != mu).any(axis=0))[0]
        assert changed.tolist() == [dim]
        np.testing.assert_allclose(z[row, :, dim], np.linspace(-2, 2, 5), atol=1e-6)
    # No dims: ranked by the training reference's per-dimension KL, most informative first.
    kl = json.loads((model_dir / "manifest.json").read_text())["reference"]["kl_per_dim"]
    ranked = stub.Traverse(vae_pb2.TraverseRequest(base=_ep(z=mu), steps=3, n_dims=3))
    assert list(ranked.dims) == [int(i) for i in np.argsort(-np.asarray(kl), kind="stable")[:3]]
    assert len(stub.Traverse(vae_pb2.TraverseRequest(base=_ep(z=mu), steps=2)).dims) == 4  # min(8, D)


def test_edit_adds_the_scaled_direction(stub, digits):
    direction = np.array([1.0, -0.5, 0.0, 2.0], np.float32)
    r = stub.Edit(vae_pb2.EditRequest(images=tensor(digits[:3]), direction=tensor(direction),
                                      scales=[0.0, 1.0, -2.0], format=vae_pb2.IMAGE_FORMAT_UINT8))
    mu = array(stub.Encode(vae_pb2.EncodeRequest(images=tensor(digits[:3]))).mu)
    z = array(r.z).reshape(3, 3, 4)
    np.testing.assert_allclose(z, mu[:, None] + np.array([0, 1, -2], np.float32)[None, :, None] * direction,
                               atol=1e-6)
    images = array(r.images)
    assert images.dtype == np.uint8 and images.shape == (9, 1, 8, 8)
    rec = array(stub.Reconstruct(vae_pb2.ReconstructRequest(images=tensor(digits[:3]),
                                                            format=vae_pb2.IMAGE_FORMAT_UINT8)).images)
    assert np.abs(images.reshape(3, 3, 1, 8, 8)[:, 0].astype(int) - rec.astype(int)).max() <= 1


def _bad_cases(digits: np.ndarray) -> list[tuple[str, object, str, grpc.StatusCode]]:
    x, z = digits[:2], np.zeros(4, np.float32)
    inv = grpc.StatusCode.INVALID_ARGUMENT
    sc, ip = vae_pb2.ScoreRequest, vae_pb2.InterpolateRequest
    tr, ed = vae_pb2.TraverseRequest, vae_pb2.EditRequest
    return [
        ("Score", sc(), "images", inv),
        ("Score", sc(images=tensor(x * 2)), "[0, 1]", inv),
        ("Score", sc(images=tensor(x[:, :, :4])), "does not match", inv),
        ("Score", sc(images=tensor(x), k=40), "2 images x k=40 = 80 rows exceed", inv),
        ("Score", sc(images=tensor(x), model="other"), "model 'other' is not served",
         grpc.StatusCode.NOT_FOUND),
        ("Score", sc(images=tensor(x), version="v0"), "version 'v0'", grpc.StatusCode.NOT_FOUND),
        ("Interpolate", ip(b=_ep(z=z), steps=3), "a: set image or z", inv),
        ("Interpolate", ip(a=_ep(z=z), b=_ep(z=z), steps=1), "steps must be >= 2", inv),
        ("Interpolate", ip(a=_ep(z=z), b=_ep(z=z), steps=65), "exceed", inv),
        ("Interpolate", ip(a=_ep(z=z), b=_ep(z=z), steps=3, method=9),
         "unknown InterpolationMethod", inv),
        ("Interpolate", ip(a=_ep(x), b=_ep(z=z), steps=3), "a.image: 2 images", inv),
        ("Interpolate", ip(a=_ep(z=np.zeros(5, np.float32)), b=_ep(z=z), steps=3),
         "latent dimension 5", inv),
        ("Interpolate", ip(a=_ep(z=z + np.nan), b=_ep(z=z), steps=3), "NaN", inv),
        ("Interpolate", ip(a=_ep(z=z), b=_ep(z=z), steps=3, format=7), "ImageFormat", inv),
        ("Traverse", tr(base=_ep(z=z), dims=[4], steps=3), "dims: [4] out of range", inv),
        ("Traverse", tr(base=_ep(z=z), n_dims=5, steps=3), "n_dims: 5", inv),
        ("Traverse", tr(base=_ep(z=z), dims=[0], steps=3, low=1, high=1), "give a range", inv),
        ("Traverse", tr(base=_ep(z=z), dims=[0], steps=3, low=float("inf")), "low", inv),
        ("Traverse", tr(base=_ep(z=z), dims=[0, 1, 2], steps=30), "3 dims x 30 steps", inv),
        ("Traverse", tr(dims=[0], steps=3), "base: set image or z", inv),
        ("Edit", ed(images=tensor(x)), "direction", inv),
        ("Edit", ed(images=tensor(x), direction=tensor(np.zeros(3, np.float32))),
         "latent dimension 3", inv),
        ("Edit", ed(images=tensor(x), direction=tensor(z), scales=[float("nan")]), "scales", inv),
        ("Edit", ed(images=tensor(x), direction=tensor(z + 9000), scales=[5.0]),
         "edited latents", inv),
        ("Edit", ed(images=tensor(x), direction=tensor(z), scales=[1.0] * 40),
         "2 images x 40 scales", inv),
    ]


def test_bad_requests_get_precise_errors(stub, digits):
    for method, request, needle, code in _bad_cases(digits):
        got, details = _code(getattr(stub, method), request)
        assert (got, needle in details) == (code, True), (method, needle, got, details)


def test_deadline_and_auth(model_dir, digits, tmp_path):
    token = tmp_path / "token"
    token.write_text("s3cret-token\n")
    with ServerThread(settings_for(model_dir, auth_token_file=str(token))) as srv, srv.channel() as ch:
        stub = stub_for(ch)
        req = vae_pb2.ScoreRequest(images=tensor(digits[:2]), k=4)
        for fn, r in ((stub.Score, req), (stub.Edit, vae_pb2.EditRequest(images=tensor(digits[:1])))):
            with pytest.raises(grpc.RpcError) as err:
                fn(r, timeout=10)
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        auth = [("authorization", "Bearer s3cret-token")]
        assert len(stub.Score(req, timeout=10, metadata=auth).elbo) == 2
        # Work of milliseconds (1,024 rows, never run inline on the event loop) against a 1 µs deadline.
        slow = vae_pb2.ScoreRequest(images=tensor(digits[:16]), k=64)
        with pytest.raises(grpc.RpcError) as err:
            stub.Score(slow, timeout=1e-6, metadata=auth)
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED


def test_old_model_folder_serves_but_score_is_failed_precondition(model_dir, digits, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(model_dir, old)
    m = json.loads((old / "manifest.json").read_text())
    del m["graphs"]["decoder_params"]
    m.pop("likelihood_params", None)
    m["reference"].pop("elbo_per_sample", None)
    (old / "manifest.json").write_text(json.dumps(m))
    (old / "decoder_params.onnx").unlink()
    with ServerThread(settings_for(old)) as srv, srv.channel() as ch:
        stub = stub_for(ch)
        code, details = _code(stub.Score, vae_pb2.ScoreRequest(images=tensor(digits[:2])))
        assert code == grpc.StatusCode.FAILED_PRECONDITION and "decoder_params" in details, details
        z = np.zeros(4, np.float32)
        path = stub.Interpolate(vae_pb2.InterpolateRequest(a=_ep(z=z), b=_ep(z=z + 1), steps=3))
        assert array(path.z).shape == (3, 4)


def find(registry: CollectorRegistry, name: str, /, **labels: str) -> float | None:
    """The sum of the samples called `name` whose labels include `labels` (series also carry the served
    version), or None when there is none."""
    got = [s.value for fam in registry.collect() for s in fam.samples
           if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())]
    return float(sum(got)) if got else None


def test_score_metrics_against_the_reference(model_dir, digits):
    registry = CollectorRegistry()
    m = json.loads((model_dir / "manifest.json").read_text())
    p01 = m["reference"]["elbo_per_sample"]["p01"]
    noise = np.random.default_rng(0).random((8, 1, 8, 8), dtype=np.float32)
    with ServerThread(settings_for(model_dir), registry=registry) as srv, srv.channel() as ch:
        stub = stub_for(ch)
        good = np.array(stub.Score(vae_pb2.ScoreRequest(images=tensor(digits), seed=0)).elbo)
        bad = np.array(stub.Score(vae_pb2.ScoreRequest(images=tensor(noise), seed=0)).elbo)
        # Read while served: an unloaded (closed) version's series leave the registry.
        model = m["model"]["name"]
        assert find(registry, "vae_score_images_total", model=model) == 24
        below = int((good < p01).sum() + (bad < p01).sum())
        assert below >= 8  # uniform noise is far below the digits' 1st percentile
        assert find(registry, "vae_score_below_reference_p01_total", model=model) == below
        assert find(registry, "vae_score_elbo_nats_count", model=model) == 24
        assert find(registry, "vae_score_reference_elbo_nats", model=model, quantile="p01") == p01
        # A bucket bound sits on the reference's p01, so the histogram reads the fraction below it too.
        le = floatToGoString(round(p01, 6))
        assert find(registry, "vae_score_elbo_nats_bucket", model=model, le=le) == below
    assert find(registry, "vae_score_images_total", model=model) is None
