"""Paths, targets, loss weights and the prediction conversions against the Gaussian closed forms."""

import math

import keras
import numpy as np
import pytest

from keras_sit.paths import CosinePath, LinearPath, VPPath
from keras_sit.transport import Transport
from tests.conftest import tiny_sit, to_numpy
from tests.gaussian import Gaussian

PATHS = {"linear": LinearPath(), "cosine": CosinePath(), "vp": VPPath()}


@pytest.mark.parametrize("name", sorted(PATHS))
def test_path_derivatives_match_finite_differences(name):
    path = PATHS[name]
    t = np.linspace(0.05, 0.95, 19).astype("float32")
    h = 1e-2
    for f, df in ((path.alpha, path.d_alpha), (path.beta, path.d_beta)):
        finite = (to_numpy(f(t + h)) - to_numpy(f(t - h))) / (2 * h)
        np.testing.assert_allclose(to_numpy(df(t)), finite, rtol=2e-3, atol=2e-3)


def test_vp_path_matches_song_et_al():
    t = np.array([0.0, 0.3, 1.0], "float32")
    log_alpha = -0.25 * t**2 * (20 - 0.1) - 0.5 * t * 0.1
    np.testing.assert_allclose(to_numpy(VPPath().alpha(t)), np.exp(log_alpha), rtol=1e-6)
    np.testing.assert_allclose(to_numpy(VPPath().alpha(np.ones(1, "float32"))), math.exp(-5.025), rtol=1e-5)
    np.testing.assert_allclose(to_numpy(VPPath().beta(t)) ** 2 + np.exp(2 * log_alpha), 1.0, rtol=1e-6)


@pytest.mark.parametrize(
    "name, expected",
    [
        ("linear", lambda t: t / (1 - t)),
        ("cosine", lambda t: math.pi / 2 * np.tan(math.pi * t / 2)),
        ("vp", lambda t: (0.1 + t * (20 - 0.1)) / 2),  # official D = beta(t)/2
    ],
)
def test_drift_var_closed_forms(name, expected):
    t = np.linspace(0.05, 0.9, 10).astype("float32")
    np.testing.assert_allclose(to_numpy(Transport(name).drift_var(t)), expected(t), rtol=1e-4)


@pytest.mark.parametrize("name", sorted(PATHS))
@pytest.mark.parametrize("prediction", ["velocity", "score", "noise"])
def test_conversions_recover_exact_fields(name, prediction, rng):
    """Feed the exact prediction of a Gaussian; every conversion must give the exact field."""
    gaussian = Gaussian(PATHS[name], mu=[1.0, -0.5], s=[0.5, 2.0])
    transport = Transport(name, prediction)
    t = rng.uniform(0.05, 0.95, 64).astype("float32")
    x = rng.normal(size=(64, 2)).astype("float32") * 2
    output = {"velocity": gaussian.velocity, "score": gaussian.score, "noise": gaussian.noise}[prediction](x, t)
    tol = dict(rtol=2e-3, atol=2e-3)
    np.testing.assert_allclose(to_numpy(transport.to_velocity(output, x, t)), to_numpy(gaussian.velocity(x, t)), **tol)
    np.testing.assert_allclose(to_numpy(transport.to_score(output, x, t)), to_numpy(gaussian.score(x, t)), **tol)
    np.testing.assert_allclose(to_numpy(transport.to_noise(output, x, t)), to_numpy(gaussian.noise(x, t)), **tol)
    np.testing.assert_allclose(to_numpy(transport.to_data(output, x, t)), to_numpy(gaussian.posterior(x, t)[0]), **tol)
    # A range that holds every clean-data estimate changes nothing; a narrow one clips it.
    wide = transport.to_velocity(output, x, t, clip_data=(-1e3, 1e3))
    np.testing.assert_allclose(to_numpy(wide), to_numpy(gaussian.velocity(x, t)), **tol)
    _, _, da, db = (
        to_numpy(f(t))[:, None] for f in (PATHS[name].alpha, PATHS[name].beta, PATHS[name].d_alpha, PATHS[name].d_beta)
    )
    clipped = np.clip(to_numpy(gaussian.posterior(x, t)[0]), 0.0, 0.5)
    expected = da * clipped + db * to_numpy(gaussian.noise(x, t))
    np.testing.assert_allclose(to_numpy(transport.to_velocity(output, x, t, clip_data=(0.0, 0.5))), expected, **tol)


def test_clipping_bounds_the_noise_models_velocity_near_pure_noise():
    """At t = 0.999 on the linear path a noise error of 0.1 becomes a data error of ~100; clipping bounds it."""
    transport = Transport("linear", "noise")
    x = np.ones((1, 2), "float32")
    t = np.full(1, 0.999, "float32")
    wrong_noise = x + 0.1  # the exact noise at t -> 1 is ~x_t
    assert np.abs(to_numpy(transport.to_velocity(wrong_noise, x, t))).max() > 50
    velocity = to_numpy(transport.to_velocity(wrong_noise, x, t, clip_data=(-1.0, 1.0)))
    np.testing.assert_allclose(velocity, 1.1 - (-1.0), rtol=1e-5)  # v = -x_hat + eps with x_hat clipped to -1


def test_targets_and_weights(rng):
    x = rng.normal(size=(6, 3)).astype("float32")
    noise = rng.normal(size=(6, 3)).astype("float32")
    t = rng.uniform(0.1, 0.9, 6).astype("float32")
    b, d = t, t / (1 - t)  # linear path
    np.testing.assert_allclose(to_numpy(Transport("linear", "velocity").target(x, noise, t)), noise - x)
    np.testing.assert_allclose(to_numpy(Transport("linear", "noise").target(x, noise, t)), noise)
    np.testing.assert_allclose(
        to_numpy(Transport("linear", "score").target(x, noise, t)), -noise / b[:, None], rtol=1e-6
    )
    assert Transport("linear", "velocity").example_weight(t) is None
    assert Transport("linear", "noise").example_weight(t) is None
    np.testing.assert_allclose(to_numpy(Transport("linear", "score").example_weight(t)), b**2, rtol=1e-6)
    np.testing.assert_allclose(
        to_numpy(Transport("linear", "noise", "velocity").example_weight(t)), (d / b) ** 2, rtol=1e-5
    )
    np.testing.assert_allclose(
        to_numpy(Transport("linear", "score", "likelihood").example_weight(t)), b**2 * d / b**2, rtol=1e-5
    )


def test_eps_defaults_and_user_values_are_honoured():
    assert (Transport("linear", "velocity").train_eps, Transport("linear", "velocity").sample_eps) == (0.0, 0.0)
    assert (Transport("cosine", "score").train_eps, Transport("cosine", "score").sample_eps) == (1e-3, 1e-3)
    assert (Transport("vp", "velocity").train_eps, Transport("vp", "velocity").sample_eps) == (1e-5, 1e-3)
    # Upstream ignores these for linear velocity, and a lone sample_eps; we keep them.
    transport = Transport("linear", "velocity", train_eps=0.01, sample_eps=0.02)
    assert transport.interval(transport.train_eps) == (0.01, 0.99)
    assert transport.interval(transport.sample_eps) == (0.02, 0.98)
    assert Transport("vp", sample_eps=0.02).interval(0.02) == (0.02, 1.0)


@pytest.mark.parametrize("sampler, bounds", [("uniform", (0.01, 0.99)), ("logit_normal", (0.01, 0.99))])
def test_time_samplers(sampler, bounds):
    transport = Transport("linear", "velocity", train_eps=0.01, time_sampler=sampler, time_loc=0.5, time_scale=0.8)
    t = to_numpy(transport.sample_time(20000, keras.random.SeedGenerator(0)))
    assert t.min() >= bounds[0] and t.max() <= bounds[1]
    if sampler == "uniform":
        assert abs(t.mean() - 0.5) < 0.01
    else:  # sigmoid(N(0.5, 0.8)) mapped to [0.01, 0.99]: median at sigmoid(0.5)
        expected = 0.01 + 0.98 / (1 + math.exp(-0.5))
        assert abs(np.median(t) - expected) < 0.01


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(prediction="x0"), "`prediction` must be one of"),
        (dict(loss_weight="snr"), "`loss_weight` must be one of"),
        (dict(prediction="velocity", loss_weight="likelihood"), "velocity losses are unweighted"),
        (dict(time_sampler="beta"), "`time_sampler`"),
        (dict(train_eps=0.7), "`train_eps` must be in"),
        (dict(time_scale=0.0), "`time_scale` must be positive"),
    ],
)
def test_bad_transport_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Transport("linear", **kwargs)


@pytest.mark.parametrize("path", ["linear", "cosine", "vp"])
@pytest.mark.parametrize("prediction, loss_weight", [("velocity", None), ("score", "likelihood"), ("noise", None)])
def test_every_path_and_prediction_trains_and_round_trips(path, prediction, loss_weight, rng, tmp_path):
    x = rng.normal(size=(16, 4, 4, 2)).astype("float32")
    model = tiny_sit(path=path, prediction=prediction, loss_weight=loss_weight)
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
    losses = model.fit(x, batch_size=8, epochs=2, verbose=0).history["loss"]
    assert np.all(np.isfinite(losses))
    model.save(str(tmp_path / "m.keras"))
    loaded = keras.saving.load_model(str(tmp_path / "m.keras"))
    assert loaded.get_config() == model.get_config()
    samples = loaded.generate(2, num_steps=3, seed=0)
    assert np.all(np.isfinite(samples))
