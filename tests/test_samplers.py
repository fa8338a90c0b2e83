"""Samplers on Gaussian data, whose exact velocity field and transport map are known."""

import keras
import numpy as np
import pytest

from keras_sit import sampling
from keras_sit.paths import CosinePath, LinearPath
from keras_sit.transport import Transport
from tests.conftest import randomize, tiny_sit, to_numpy
from tests.gaussian import Gaussian

MU, S = [1.0, -2.0], [0.5, 1.5]


def exact_drift(gaussian):
    return gaussian.velocity


def endpoint_error(method, steps, path, z):
    gaussian = Gaussian(path, MU, S)
    out = to_numpy(sampling.integrate_ode(exact_drift(gaussian), z, steps, method))
    return np.abs(out - gaussian.transport_map(z)).max()


@pytest.mark.parametrize(
    "method, order, steps", [("euler", 1, 16), ("midpoint", 2, 16), ("heun", 2, 16), ("ab2", 2, 16), ("rk4", 4, 8)]
)
def test_fixed_step_convergence_order(method, order, steps, rng):
    """Doubling the steps divides the error by 2^order (noise at t=1 -> mu + s z at t=0).

    Cosine path: the ratio is the nominal one. Linear path: at least nominal
    (midpoint happens to gain an order there). rk4 is measured at 8 -> 16
    steps, where its error (~1e-5) is still above float32 round-off.
    """
    z = rng.normal(size=(64, 2)).astype("float32")
    coarse, fine = (endpoint_error(method, n, CosinePath(), z) for n in (steps, 2 * steps))
    assert 0.75 * 2**order < coarse / fine < 1.5 * 2**order, (coarse, fine)
    coarse, fine = (endpoint_error(method, n, LinearPath(), z) for n in (steps // 2, steps))
    assert coarse / fine > 0.75 * 2**order, (coarse, fine)


def test_ode_nfe():
    assert [sampling.ode_nfe(m, 10) for m in ("euler", "midpoint", "heun", "rk4")] == [10, 20, 20, 40]


def test_reverse_ode_encodes_data_to_noise(rng):
    gaussian = Gaussian(LinearPath(), MU, S)
    z = rng.normal(size=(32, 2)).astype("float32")
    x = gaussian.transport_map(z).astype("float32")
    encoded = to_numpy(sampling.integrate_ode(exact_drift(gaussian), x, 32, "rk4", t_start=0.0, t_end=1.0))
    np.testing.assert_allclose(encoded, z, atol=1e-3)
    reversed_ = to_numpy(sampling.integrate_ode(exact_drift(gaussian), x, 32, "rk4", reverse=True))
    np.testing.assert_allclose(reversed_, encoded, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("method", ["sde-euler", "sde-heun"])
@pytest.mark.parametrize("form", ["sigma", "constant", "linear"])
def test_sde_reproduces_mean_and_variance(method, form, rng):
    gaussian = Gaussian(LinearPath(), MU, S)
    transport = Transport("linear")

    def velocity_and_score(x, t):
        return gaussian.velocity(x, t), gaussian.score(x, t)

    n, steps, last = 4000, 100, 0.04
    noise = rng.normal(size=(steps, n, 2)).astype("float32")
    x = rng.normal(size=(n, 2)).astype("float32")
    w = lambda t: sampling.diffusion_coefficient(form, t, transport)  # noqa: E731
    x = sampling.integrate_sde(velocity_and_score, x, noise, 1.0, last, w, method)
    # The noiseless "mean" step shrinks the spread by (1 - h w / var); fine for the small w of
    # sigma/linear at t = 0.04, not for w = 1: there the plain ODE step is the right last step.
    last_step = "euler" if form == "constant" else "mean"
    x = to_numpy(
        sampling.sde_last_step(last_step, velocity_and_score, x, np.full(n, last, "float32"), last, w, transport.path)
    )
    # Within ~4 standard errors of the target moments, plus the O(step) bias.
    np.testing.assert_allclose(x.mean(0), MU, atol=4 * max(S) / np.sqrt(n) + 0.03)
    np.testing.assert_allclose(x.std(0), S, rtol=0.06)


def test_diffusion_forms_in_our_time():
    transport = Transport("linear")
    t = np.array([0.25, 0.5], "float32")
    expected = {
        "constant": [2.0, 2.0],
        "SBDM": 2 * t / (1 - t),
        "sigma": 2 * t,
        "linear": 2 * t,
        "decreasing": 0.25 * (1 - 2 * np.cos(np.pi * t)) ** 2,
        "increasing-decreasing": 2 * np.sin(np.pi * t) ** 2,
    }
    for form, values in expected.items():
        np.testing.assert_allclose(
            to_numpy(sampling.diffusion_coefficient(form, t, transport, norm=2.0)), values, rtol=1e-5
        )


@pytest.mark.parametrize("sampler", ["euler", "heun", "midpoint", "rk4", "ab2", "dopri5", "sde-euler", "sde-heun"])
def test_generate_with_every_sampler(sampler, rng):
    model = tiny_sit(num_classes=3)
    randomize(model, rng)
    samples = model.generate(
        4, labels=[0, 1, 2, 0], num_steps=4, cfg_scale=2.0, sampler=sampler, seed=0, atol=1e-3, rtol=1e-2
    )
    assert samples.shape == (4, 4, 4, 2) and np.all(np.isfinite(samples))


@pytest.mark.parametrize("sampler, extra", [("euler", 0), ("heun", 0), ("sde-euler", 1), ("sde-heun", 0)])
def test_trajectory_and_progress_bar_follow_the_compiled_loop(sampler, extra, rng, capsys):
    """Step-by-step generation (for `verbose`/`return_trajectory`) walks the same grid as the one-call loop."""
    model = tiny_sit(num_classes=3)
    randomize(model, rng)
    options = dict(labels=[0, 1, 2], num_steps=4, cfg_scale=2.0, sampler=sampler, seed=3)
    if sampler == "sde-heun":
        options["last_step"] = None
    samples = model.generate(3, **options, verbose=0)  # one compiled call
    stepped, trajectory = model.generate(3, **options, return_trajectory=True, verbose=1)
    assert trajectory.shape == (4 + 1 + extra, 3, 4, 4, 2)
    np.testing.assert_allclose(stepped, samples, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(trajectory[-1], stepped)
    nfe = 4 * (2 if sampler.endswith("heun") else 1)
    assert f"nfe: {nfe}" in capsys.readouterr().out
    if not sampler.startswith("sde"):  # an ODE is fixed by its initial noise
        again = model.generate(3, **{**options, "seed": None}, noise=trajectory[0])
        np.testing.assert_allclose(again, samples, rtol=1e-5, atol=1e-5)


def test_progress_bar_by_default_as_keras_predict(rng, capsys):
    """`verbose="auto"` (the default) shows a bar over the steps, like `predict`; 0 is silent and the same samples."""
    model = tiny_sit(num_classes=3)
    randomize(model, rng)
    shown = model.generate(2, labels=[0, 1], num_steps=3, sampler="heun", seed=1)
    out = capsys.readouterr().out
    assert "3/3" in out and "nfe: 6" in out
    silent = model.generate(2, labels=[0, 1], num_steps=3, sampler="heun", seed=1, verbose=0)
    assert capsys.readouterr().out == ""
    np.testing.assert_allclose(shown, silent, rtol=1e-5, atol=1e-5)


def test_dopri5_trajectory_solves_equal_segments(rng):
    model = tiny_sit()
    randomize(model, rng, scale=0.05)  # a smooth field, on which dopri5 converges in few steps
    tight = dict(sampler="dopri5", seed=1, atol=1e-5, rtol=1e-5)
    samples = model.generate(3, **tight)
    stepped, trajectory = model.generate(3, num_steps=5, return_trajectory=True, **tight)
    assert trajectory.shape == (6, 3, 4, 4, 2)
    np.testing.assert_allclose(stepped, samples, atol=3e-3)  # both within tolerance of the solution


def test_encode_then_generate_round_trips(rng):
    model = tiny_sit(num_classes=3)
    randomize(model, rng, scale=0.05)
    x = rng.normal(size=(3, 4, 4, 2)).astype("float32")
    labels = np.array([0, 2, 1])
    noise = model.encode(x, labels, num_steps=20, sampler="rk4")
    assert np.abs(noise - x).max() > 0.1  # the model's field moved it
    back = model.generate(3, labels, num_steps=20, sampler="rk4", noise=noise)
    np.testing.assert_allclose(back, x, atol=1e-4)
    with pytest.raises(ValueError, match="`sampler` must be one of"):
        model.encode(x, labels, sampler="sde-euler")
    with pytest.raises(ValueError, match="`noise` must hold `num_samples`=2"):
        model.generate(2, [0, 1], noise=noise)


def test_clip_data_tames_a_noise_model_near_pure_noise(rng):
    model = tiny_sit(prediction="noise")
    randomize(model, rng, scale=0.05)
    raw = model.generate(8, num_steps=10, seed=0)
    clipped = model.generate(8, num_steps=10, seed=0, clip_data=(-1.0, 1.0))
    assert np.abs(raw).max() > 10 * np.abs(clipped).max(), (np.abs(raw).max(), np.abs(clipped).max())
    with pytest.raises(ValueError, match="`clip_data` must be a pair"):
        model.generate(2, clip_data=(1.0, -1.0))


@pytest.mark.parametrize("path", ["linear", "cosine", "vp"])
def test_sbdm_with_velocity_model_stays_finite(path, rng):
    """Upstream starts SBDM at t where D is infinite and samples NaN; we keep away from it."""
    model = tiny_sit(path=path)
    randomize(model, rng)
    for last_step in (None, "mean", "tweedie", "euler"):
        samples = model.generate(4, num_steps=5, sampler="sde-euler", diffusion="SBDM", last_step=last_step, seed=0)
        assert np.all(np.isfinite(samples)), last_step


def test_guidance_channels_and_interval(rng):
    model = tiny_sit(num_classes=3)
    randomize(model, rng)
    x = rng.normal(size=(2, 4, 4, 2)).astype("float32")
    t = np.array([0.2, 0.7], "float32")
    y = np.array([1, 2], "int32")
    cond = to_numpy(model.guided_output(x, t, y))
    guided = to_numpy(model.guided_output(x, t, y, cfg_scale=3.0))
    first = to_numpy(model.guided_output(x, t, y, cfg_scale=3.0, guidance_channels=1))
    np.testing.assert_allclose(first[..., :1], guided[..., :1], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(first[..., 1:], cond[..., 1:], rtol=1e-5, atol=1e-5)
    interval = to_numpy(model.guided_output(x, t, y, cfg_scale=3.0, guidance_interval=(0.5, 1.0)))
    np.testing.assert_allclose(interval[0], cond[0], rtol=1e-5, atol=1e-5)  # t=0.2 outside
    np.testing.assert_allclose(interval[1], guided[1], rtol=1e-5, atol=1e-5)  # t=0.7 inside
    with pytest.raises(ValueError, match="`guidance_channels` must be an int in"):
        model.generate(2, labels=[0, 1], guidance_channels=3)
    with pytest.raises(ValueError, match="`guidance_interval` must satisfy"):
        model.generate(2, labels=[0, 1], guidance_interval=(0.8, 0.2))
    with pytest.raises(ValueError, match="`sampler` must be one of"):
        model.generate(2, labels=[0, 1], sampler="dopri8")
    with pytest.raises(ValueError, match="`diffusion` must be one of"):
        model.generate(2, labels=[0, 1], sampler="sde-euler", diffusion="cosine")


@pytest.mark.parametrize("control", ["batch", "example"])
@pytest.mark.parametrize("first_step", [None, 0.05])
def test_dopri5_meets_tolerance_with_fewer_evaluations_than_heun(control, first_step, rng):
    """The tolerance bounds each step's error; the end point's is within 10x of it (torchdiffeq's: ~30x here)."""
    gaussian = Gaussian(CosinePath(), MU, S)
    z = rng.normal(size=(64, 2)).astype("float32")
    tolerance = 1e-4
    x, nfe = sampling.dopri5(exact_drift(gaussian), z, 1.0, 0.0, tolerance, tolerance, first_step, control=control)
    error, nfe = np.abs(to_numpy(x) - gaussian.transport_map(z)).max(), int(to_numpy(nfe))
    assert error < 10 * tolerance, error
    steps = 8  # the fewest Heun steps (doubling) that reach the same error
    while endpoint_error("heun", steps, CosinePath(), z) > error:
        steps *= 2
    assert nfe < sampling.ode_nfe("heun", steps), (nfe, steps)


@pytest.mark.parametrize("control", ["batch", "example"])
def test_dopri5_reverse_and_batch_mates(control, rng):
    """Encoding runs t: 0 -> 1. Per-example control keeps an example's result independent of its
    batch-mates; the batch's shared control (upstream's) steps differently with them than alone."""
    gaussian = Gaussian(LinearPath(), MU, S)
    z = rng.normal(size=(8, 2)).astype("float32")
    x = gaussian.transport_map(z).astype("float32")
    tolerance = dict(atol=1e-5, rtol=1e-5, control=control)
    encoded, nfe = sampling.dopri5(exact_drift(gaussian), x, t_start=0.0, t_end=1.0, **tolerance)
    np.testing.assert_allclose(to_numpy(encoded), z, atol=1e-3)
    alone, nfe_alone = sampling.dopri5(exact_drift(gaussian), x[:1], t_start=0.0, t_end=1.0, **tolerance)
    np.testing.assert_allclose(to_numpy(alone), z[:1], atol=1e-3)
    if control == "example":
        np.testing.assert_allclose(to_numpy(alone), to_numpy(encoded)[:1], rtol=1e-6)
    else:
        assert not np.array_equal(to_numpy(alone), to_numpy(encoded)[:1]), (int(nfe), int(nfe_alone))
    reversed_, _ = sampling.dopri5(exact_drift(gaussian), x, reverse=True, **tolerance)
    np.testing.assert_allclose(to_numpy(reversed_), to_numpy(encoded), rtol=1e-6)


def spiral(t_end, x0, decay=-0.5, turn=3.0):
    """`dx/dt = A x` with `A = [[decay, turn], [-turn, decay]]`: its matrix and exact solution at `t_end`."""
    a = np.array([[decay, turn], [-turn, decay]], "float32")
    c, s = np.cos(turn * t_end), np.sin(turn * t_end)
    return a, np.exp(decay * t_end) * x0 @ np.array([[c, -s], [s, c]], "float32")


def test_dopri5_batch_control_matches_torchdiffeq(rng):
    """The batch control is upstream's `torchdiffeq.odeint(method="dopri5")`: as many drift
    evaluations (to within its overshoot of the end, which we do not take) and the same solution."""
    import torch  # every test environment has all three frameworks (.ci/cpu-frameworks.txt)
    import torchdiffeq  # the dev extra

    x0 = (rng.normal(size=(16, 2)) * rng.uniform(0.1, 3.0, size=(16, 1))).astype("float32")
    a, exact = spiral(2.0, x0)
    calls, torch_calls = [], []

    def drift(x, t):
        calls.append(t)  # counts on PyTorch, where the loop runs eagerly
        return keras.ops.matmul(x, a.T)

    def torch_drift(t, y):
        torch_calls.append(t)
        return y @ torch.from_numpy(a.T)

    for atol, rtol in ((1e-6, 1e-3), (1e-7, 1e-5)):
        calls.clear(), torch_calls.clear()
        x, nfe = sampling.dopri5(drift, x0, 0.0, 2.0, atol=atol, rtol=rtol, control="batch")
        x, nfe = to_numpy(x), int(to_numpy(nfe))
        if keras.backend.backend() == "torch":
            assert nfe == len(calls)
        with torch.no_grad():
            y = torchdiffeq.odeint(
                torch_drift, torch.from_numpy(x0), torch.tensor([0.0, 2.0]), method="dopri5", atol=atol, rtol=rtol
            )[-1].numpy()
        assert len(torch_calls) / 1.5 <= nfe <= 1.2 * len(torch_calls), (nfe, len(torch_calls))
        scale = np.abs(exact).max()
        assert np.abs(x - exact).max() < 20 * rtol * scale, np.abs(x - exact).max()
        np.testing.assert_allclose(x, y, atol=20 * rtol * scale)


def test_dopri5_control_is_validated():
    with pytest.raises(ValueError, match="`control` must be one of"):
        sampling.dopri5(lambda x, t: x, np.ones((2, 2), "float32"), control="global")
    with pytest.raises(ValueError, match="`adaptive_control` must be one of"):
        tiny_sit().generate(2, sampler="dopri5", adaptive_control="global")


def gaussian_log_density(x):
    return (-0.5 * ((x - np.array(MU)) / np.array(S)) ** 2 - np.log(S) - 0.5 * np.log(2 * np.pi)).sum(1)


@pytest.mark.parametrize("method, steps", [("rk4", 20), ("dopri5", 1)])
def test_log_likelihood_exact_divergence_matches_analytic_density(method, steps, rng):
    gaussian = Gaussian(LinearPath(), MU, S)
    x = (rng.normal(size=(16, 2)) * S + MU).astype("float32")
    log_p, _ = sampling.log_likelihood(gaussian.velocity, x, steps, method)
    per_dim = np.abs(to_numpy(log_p) - gaussian_log_density(x)) / 2
    assert per_dim.max() < 0.01, per_dim.max()


def test_log_likelihood_hutchinson_is_unbiased_within_its_error(rng):
    """Gaussian probes on a correlated field: the mean over probe sets is within 4 standard errors."""
    gaussian = Gaussian(CosinePath(), MU, S)
    angle = 0.6  # rotate the data so the velocity's Jacobian is not diagonal
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]], "float32")

    def velocity(x, t):  # velocity of the rotated Gaussian: R v(R^T x)
        import keras

        return keras.ops.matmul(gaussian.velocity(keras.ops.matmul(x, rotation), t), rotation.T)

    x = ((rng.normal(size=(4, 2)) * S + MU) @ rotation.T).astype("float32")
    exact = to_numpy(sampling.log_likelihood(velocity, x, 8, "rk4")[0])
    np.testing.assert_allclose(exact, gaussian_log_density(x @ rotation), atol=0.02)
    # Ten independent estimates in one solve: the batch holds ten copies of x, each with its own probes.
    copies = 10
    probes = rng.normal(size=(4, copies * len(x), 2)).astype("float32")
    estimates = to_numpy(sampling.log_likelihood(velocity, np.tile(x, (copies, 1)), 8, "rk4", probes=probes)[0])
    estimates = estimates.reshape(copies, len(x))
    standard_error = estimates.std(0) / np.sqrt(len(estimates))
    assert np.all(np.abs(estimates.mean(0) - exact) < 4 * standard_error + 1e-3)
    assert np.all(estimates.std(0) > 0)  # a real estimator, not the exact divergence


def test_model_log_likelihood_runs_and_reports_bits_per_dim(rng):
    model = tiny_sit(input_shape=None, input_dim=4, num_classes=3)
    for variable in model.backbone.trainable_weights:
        variable.assign(rng.normal(0, 0.05, size=variable.shape).astype("float32"))
    x = rng.normal(size=(3, 4)).astype("float32")
    log_p, bpd = model.log_likelihood(x, labels=[0, 1, 2], num_steps=2, sampler="euler")  # auto: exact for 4 dims
    np.testing.assert_allclose(bpd, -log_p / (4 * np.log(2)), rtol=1e-6)
    estimate, _ = model.log_likelihood(
        x, labels=[0, 1, 2], num_steps=2, sampler="euler", divergence="hutchinson", num_probes=16, seed=0
    )
    assert np.all(np.isfinite(estimate)) and np.all(np.abs(estimate - log_p) < 0.1 * np.abs(log_p))
    with pytest.raises(ValueError, match="`divergence` must be"):
        model.log_likelihood(x, labels=[0, 1, 2], divergence="trace")
