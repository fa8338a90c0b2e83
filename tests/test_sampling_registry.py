"""The sampler registry, a user's own sampler, the stateful `ab2`, and keyword-only sampling options."""

import dataclasses
import inspect

import numpy as np
import pytest

from keras_sit import SiT, sampling
from keras_sit.paths import CosinePath, LinearPath
from keras_sit.sampling.settings import call_defaults
from tests.conftest import randomize, tiny_sit, to_numpy
from tests.gaussian import Gaussian

MU, S = [1.0, -2.0], [0.5, 1.5]


class Ralston(sampling.FixedStepSampler):
    """Ralston's second-order Runge-Kutta method: a user's sampler, one class and its registration."""

    name, order, calls_per_step = "ralston", 2, 2

    def update(self, drift, x, t, h):
        k1 = drift(x, t)
        k2 = drift(x + 2.0 / 3.0 * h * k1, t + 2.0 / 3.0 * h)
        return x + h * (0.25 * k1 + 0.75 * k2)


@pytest.fixture
def ralston():
    sampler = sampling.register_sampler(Ralston())
    yield sampler
    sampling.unregister_sampler("ralston")  # the registry is global: leave it as found


def endpoint_error(method, steps, path, z):
    gaussian = Gaussian(path, MU, S)
    out = to_numpy(sampling.integrate_ode(gaussian.velocity, z, steps, method))
    return np.abs(out - gaussian.transport_map(z)).max()


def test_registry_declares_the_built_in_samplers():
    assert sampling.sampler_names() == (
        "euler", "midpoint", "heun", "rk4", "ab2", "heun-euler-last", "dopri5", "sde-euler", "sde-heun", "mean-flow",
    )  # fmt: skip
    assert sampling.sampler_names(reversible=True) == (
        "euler", "midpoint", "heun", "rk4", "ab2", "heun-euler-last", "dopri5",
    )  # fmt: skip
    declared = {name: sampling.get_sampler(name) for name in sampling.sampler_names()}
    assert {name: s.calls_per_step for name, s in declared.items()} == {
        "euler": 1, "midpoint": 2, "heun": 2, "rk4": 4, "ab2": 1, "heun-euler-last": 2, "dopri5": 6, "sde-euler": 1,
        "sde-heun": 2, "mean-flow": 1,
    }  # fmt: skip
    assert [name for name, s in declared.items() if s.average_velocity] == ["mean-flow"]
    assert [name for name, s in declared.items() if s.stateful] == ["ab2"]
    assert [name for name, s in declared.items() if s.adaptive] == ["dopri5"]
    assert [name for name, s in declared.items() if s.kind == "sde"] == ["sde-euler", "sde-heun"]
    with pytest.raises(ValueError, match=r"`sampler` must be one of \('euler', .*'mean-flow'\); got 'ralston'"):
        sampling.get_sampler("ralston")


def test_user_sampler_converges_at_its_order_and_is_unregistered(ralston, rng):
    z = rng.normal(size=(64, 2)).astype("float32")
    coarse, fine = (endpoint_error("ralston", n, CosinePath(), z) for n in (16, 32))
    assert 0.75 * 4 < coarse / fine < 1.5 * 4, (coarse, fine)
    assert sampling.ode_nfe("ralston", 10) == 20
    with pytest.raises(ValueError, match="registered already"):
        sampling.register_sampler(Ralston())


def test_user_sampler_in_generate_by_name(ralston, rng, capsys):
    """`generate(sampler="ralston")` takes Ralston's steps on the model's velocity, whole or step by step."""
    model = tiny_sit(num_classes=3)
    randomize(model, rng, scale=0.05)
    noise = rng.normal(size=(2, 4, 4, 2)).astype("float32")
    labels = np.array([0, 2])
    steps = 3
    samples = model.generate(2, labels, noise=noise, num_steps=steps, sampler="ralston", verbose=0)
    stepped = model.generate(2, labels, noise=noise, num_steps=steps, sampler="ralston", verbose=1)
    assert f"nfe: {2 * steps}" in capsys.readouterr().out
    lo, hi = model.transport.interval(model.transport.sample_eps)
    h, x = (lo - hi) / steps, noise

    def v(x, t):
        return to_numpy(model.velocity(x, np.full(2, t, "float32"), labels))

    for i in range(steps):
        t = hi + i * h
        k1 = v(x, t)
        k2 = v(x + 2 / 3 * h * k1, t + 2 / 3 * h)
        x = x + h * (0.25 * k1 + 0.75 * k2)
    np.testing.assert_allclose(samples, x, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(stepped, samples, rtol=1e-5, atol=1e-5)


def test_ab2_is_euler_then_adams_bashforth():
    """On dx/dt = x from t = 1 to 0 (h = -1/4): x1 = x0 (1 + h), then x_(i+1) = x_i + h (3/2 x_i - 1/2 x_(i-1))."""
    x0 = np.array([[1.0, -2.0]], "float32")
    h, expected = -0.25, [x0, x0 * 0.75]
    for _ in range(3):
        expected.append(expected[-1] + h * (1.5 * expected[-1] - 0.5 * expected[-2]))
    out = to_numpy(sampling.integrate_ode(lambda x, t: x, x0, 4, "ab2"))
    np.testing.assert_allclose(out, expected[-1], rtol=1e-6)


def test_ab2_order_holds_on_the_gaussian(rng):
    z = rng.normal(size=(64, 2)).astype("float32")
    coarse, fine = (endpoint_error("ab2", n, CosinePath(), z) for n in (16, 32))
    assert 0.75 * 4 < coarse / fine < 1.5 * 4, (coarse, fine)
    coarse, fine = (endpoint_error("ab2", n, LinearPath(), z) for n in (8, 16))
    assert coarse / fine > 0.75 * 4, (coarse, fine)


def test_ab2_stepwise_equals_whole_loop_and_encodes(rng, capsys):
    model = tiny_sit(num_classes=3)
    randomize(model, rng, scale=0.05)
    options = dict(num_steps=20, sampler="ab2")
    samples = model.generate(3, [0, 1, 2], seed=4, verbose=0, **options)
    stepped, trajectory = model.generate(3, [0, 1, 2], seed=4, return_trajectory=True, **options)
    assert "nfe: 20" in capsys.readouterr().out  # one model call per step
    assert trajectory.shape == (21, 3, 4, 4, 2)
    np.testing.assert_allclose(stepped, samples, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(trajectory[-1], stepped)
    noise = model.encode(samples, [0, 1, 2], **options)
    np.testing.assert_allclose(noise, trajectory[0], atol=2e-3)  # back to the initial noise, up to O(h^2)


def test_ab2_log_likelihood_matches_analytic_density(rng):
    gaussian = Gaussian(LinearPath(), MU, S)
    x = (rng.normal(size=(16, 2)) * S + MU).astype("float32")
    log_p, nfe = sampling.log_likelihood(gaussian.velocity, x, 40, "ab2")
    assert int(to_numpy(nfe)) == 40
    density = (-0.5 * ((x - np.array(MU)) / np.array(S)) ** 2 - np.log(S) - 0.5 * np.log(2 * np.pi)).sum(1)
    assert np.abs(to_numpy(log_p) - density).max() / 2 < 0.01


def test_options_are_keyword_only_and_checked_per_call(rng):
    model = tiny_sit(num_classes=3)
    x = np.zeros((2, 4, 4, 2), "float32")
    with pytest.raises(TypeError, match=r"`num_step` is not an option of `generate`; its options are \('sampler'"):
        model.generate(2, num_step=4)
    with pytest.raises(TypeError, match="positional argument"):
        model.generate(2, None, 4)
    with pytest.raises(TypeError, match="positional argument"):
        model.encode(x, None, 4)
    with pytest.raises(TypeError, match=r"`diffusion` does not apply to `encode`; its options are \('sampler', "):
        model.encode(x, diffusion="SBDM")
    with pytest.raises(TypeError, match=r"`guidance_channels` does not apply to `log_likelihood`"):
        model.log_likelihood(x, guidance_channels=1)
    reversible = r"\('euler', 'midpoint', 'heun', 'rk4', 'ab2', 'heun-euler-last', 'dopri5'\); got 'sde-heun'"
    with pytest.raises(ValueError, match=f"`sampler` must be one of {reversible}"):
        model.encode(x, sampler="sde-heun")
    with pytest.raises(ValueError, match=f"`sampler` must be one of {reversible}"):
        model.log_likelihood(x, sampler="sde-heun")
    with pytest.raises(TypeError, match="positional argument"):
        sampling.SamplingSettings("heun")


def test_signatures_show_every_option_with_its_default():
    fields = dataclasses.fields(sampling.SamplingSettings)
    parameters = inspect.signature(SiT.generate).parameters
    for field in fields:
        assert parameters[field.name].kind is inspect.Parameter.KEYWORD_ONLY
        assert parameters[field.name].default == field.default, field.name
        assert f"{field.name} (default {field.default!r})" in SiT.generate.__doc__
    assert list(parameters)[:3] == ["self", "num_samples", "labels"]
    likelihood = inspect.signature(SiT.log_likelihood).parameters
    assert likelihood["sampler"].default == "rk4" == call_defaults("log_likelihood")["sampler"]
    assert "diffusion" not in likelihood and "cfg_scale" not in likelihood
    encode = inspect.signature(SiT.encode).parameters
    assert encode["atol"].default == sampling.DOPRI5_ATOL and encode["rtol"].default == sampling.DOPRI5_RTOL
    assert "diffusion" not in encode and "last_step" not in encode
