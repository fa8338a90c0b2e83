"""keras_sit's samplers against REPA's (`tests/reference_repa_samplers.py`, PyTorch float64).

The reference samplers call the keras_sit model's own velocity, so the comparison isolates the
samplers: `"heun-euler-last"` is REPA's `euler_sampler(heun=True)`, `"euler"` its
`euler_sampler(heun=False)`, and `"sde-euler"` with the `"sigma"` diffusion and the `"mean"` last
step of size 0.04 its `euler_maruyama_sampler`, given the same Gaussian draws.
"""

import keras
import numpy as np
import pytest
import torch

import keras_sit
from keras_sit import sampling
from keras_sit.sampling import guidance, methods
from keras_sit.sampling.guidance import guide
from keras_sit.sampling.settings import SamplingSettings
from tests import reference_repa_samplers as repa
from tests.conftest import to_numpy

# N = 8: the grid 1, .875, .75, .625, ... has its step .75 -> .625 across the guidance interval's top
# 0.7, where REPA guides neither call (the step starts outside) though the corrector's time is inside.
N, CFG, INTERVAL = 8, 1.8, (0.0, 0.7)
LABELS = np.array([0, 2, 4, 1])
ATOL = 1e-4  # float32 against float64


@pytest.fixture(scope="module")
def sit():
    """A tiny class-conditional SiT whose adaLN-Zero (zero-initialised) weights are made random."""
    model = keras_sit.SiT(
        input_shape=(4, 4, 2), patch_size=2, hidden_size=32, depth=2, num_heads=2, num_classes=5,
        class_dropout_prob=0.1, seed=0,
    )  # fmt: skip
    rng = np.random.default_rng(0)
    for variable in model.backbone.trainable_weights:
        variable.assign(rng.normal(0, 0.15, size=variable.shape).astype("float32"))
    return model


@pytest.fixture(scope="module")
def noise():
    return np.random.default_rng(1).normal(size=(len(LABELS), 4, 4, 2)).astype("float32")


@pytest.fixture(scope="module")
def velocity(sit):
    """REPA's `model(x, t, y) -> v` on torch float64 tensors: the SiT's network, unguided, any label.

    Compiled as the samplers are (eager calls of the network are slow on JAX).
    """

    def network_velocity(x, t, y):
        return sit.transport.to_velocity(sit.network({"x_t": x, "t": t, "labels": y}), x, t)

    compiled = keras_sit.backend.compile_inference(sit, network_velocity)

    def model(x, t, y):
        x, t, y = (keras.ops.convert_to_tensor(a.numpy().astype(d)) for a, d in zip((x, t, y), _DTYPES))
        return torch.from_numpy(to_numpy(compiled(x, t, y)).astype("float64"))

    return model


_DTYPES = ("float32", "float32", "int32")


def reference_ode(sit, velocity, noise, heun):
    x = repa.euler_sampler(
        velocity, torch.from_numpy(noise.astype("float64")), torch.from_numpy(LABELS), sit.backbone.null_class, N,
        heun, CFG, *INTERVAL,
    )  # fmt: skip
    return x.numpy()


def test_heun_euler_last_equals_repa_heun_whole_and_stepwise(sit, velocity, noise, capsys):
    """`"heun-euler-last"` is REPA's `--heun`, its corrector guided as the step's start, in both loops."""
    assert any(t_cur > INTERVAL[1] + 1e-3 and t_next < INTERVAL[1] - 1e-3 for t_cur, t_next in _grid(N))
    options = dict(sampler="heun-euler-last", num_steps=N, cfg_scale=CFG, guidance_interval=INTERVAL)
    whole = sit.generate(len(LABELS), LABELS, noise=noise, verbose=0, **options)
    stepped, trajectory = sit.generate(len(LABELS), LABELS, noise=noise, verbose=1, return_trajectory=True, **options)
    assert f"nfe: {2 * N - 1}" in capsys.readouterr().out  # the last step is one call
    assert trajectory.shape == (N + 1, *noise.shape)
    expected = reference_ode(sit, velocity, noise, heun=True)
    print("heun-euler-last: max |diff|", np.abs(whole - expected).max(), np.abs(stepped - expected).max())
    np.testing.assert_allclose(whole, expected, atol=ATOL, rtol=0)
    np.testing.assert_allclose(stepped, expected, atol=ATOL, rtol=0)
    # A plain drift `f(x, t)` (unmarked) has its corrector guided at its own time: far from REPA.
    drift = guidance.guided_drift(sit, SamplingSettings(**options), keras.ops.convert_to_tensor(LABELS))
    lo, hi = sit.transport.interval(sit.transport.sample_eps)
    run = keras_sit.backend.compile_inference(
        sit, lambda x: sampling.integrate_ode(lambda x, t: drift(x, t), x, N, "heun-euler-last", hi, lo)
    )
    at_t_next = to_numpy(run(keras.ops.convert_to_tensor(noise)))
    print("corrector guided at t_next: max |diff|", np.abs(at_t_next - expected).max(), "scale", np.abs(expected).max())
    assert np.abs(at_t_next - expected).max() > 100 * ATOL


def test_euler_equals_repa_euler(sit, velocity, noise):
    whole = sit.generate(
        len(LABELS), LABELS, noise=noise, verbose=0, sampler="euler", num_steps=N, cfg_scale=CFG,
        guidance_interval=INTERVAL,
    )  # fmt: skip
    expected = reference_ode(sit, velocity, noise, heun=False)
    print("euler: max |diff|", np.abs(whole - expected).max())
    np.testing.assert_allclose(whole, expected, atol=ATOL, rtol=0)


def test_sde_euler_equals_repa_euler_maruyama(sit, velocity, noise, monkeypatch):
    """keras_sit's `num_steps = N - 1` steps on [1, 0.04] and mean last step are REPA's `num_steps = N`."""
    drawn = []

    def draw_sde_noise(*args):
        drawn.append(to_numpy(sampling.draw_sde_noise(*args)))
        return keras.ops.convert_to_tensor(drawn[-1])

    monkeypatch.setattr(methods, "draw_sde_noise", draw_sde_noise)
    samples = sit.generate(
        len(LABELS), LABELS, noise=noise, seed=3, verbose=0, sampler="sde-euler", diffusion="sigma",
        last_step="mean", last_step_size=0.04, num_steps=N - 1, cfg_scale=CFG, guidance_interval=INTERVAL,
    )  # fmt: skip
    (eps,) = drawn
    assert eps.shape == (N - 1, *noise.shape)
    expected = repa.euler_maruyama_sampler(
        velocity, torch.from_numpy(noise.astype("float64")), torch.from_numpy(LABELS), sit.backbone.null_class,
        eps, N, CFG, *INTERVAL,
    ).numpy()  # fmt: skip
    print("sde-euler: max |diff|", np.abs(samples - expected).max())
    np.testing.assert_allclose(samples, expected, atol=ATOL, rtol=0)


def test_heun_euler_last_steps_and_model_calls():
    """On dx/dt = x (a plain drift `f(x, t)`): Heun's factor `1 + h + h^2/2` on every step but the
    last, Euler's `1 + h` on the last; `2 N - 1` calls in all, one step alone is Euler."""
    x0 = np.array([[1.0, -2.0]], "float32")
    for steps in (1, 2, 5):
        h = -1.0 / steps
        expected = x0 * (1 + h + h * h / 2) ** (steps - 1) * (1 + h)
        out = to_numpy(sampling.integrate_ode(lambda x, t: x, x0, steps, "heun-euler-last"))
        np.testing.assert_allclose(out, expected, rtol=1e-6)
        carry = (keras.ops.convert_to_tensor(x0), ())
        for i in range(steps):
            carry = sampling.ode_step(lambda x, t: x, carry, i, steps, "heun-euler-last")
        np.testing.assert_allclose(to_numpy(carry[0]), expected, rtol=1e-6)
        assert sampling.ode_nfe("heun-euler-last", steps) == 2 * steps - 1
    sampler = sampling.get_sampler("heun-euler-last")
    assert (sampler.kind, sampler.order, sampler.reversible) == ("ode", 2, True)
    problem = sampling.Problem(lambda x, t: x, 1.0, 0.0, N)
    assert int(to_numpy(sampler.solve(problem, x0, None)[1])) == 2 * N - 1
    calls = [
        sampler.advance(problem, (x0, ()), None, keras.ops.convert_to_tensor(i, "int32"), N)[1] for i in (0, N - 1)
    ]
    assert [int(to_numpy(c)) for c in calls] == [2, 1]


def test_guide_tests_the_interval_at_guidance_t(sit, noise):
    """Without `guidance_t`, examples whose `t` lies in the interval are guided, the rest conditional;
    with it, the interval is tested at `guidance_t` while the network is still evaluated at `t`."""
    t = np.array([0.5, 0.9], "float32")

    def outputs(x, t, labels, guidance_t):
        return (
            guide(sit, x, t, labels, CFG),
            guide(sit, x, t, labels, 1.0),
            guide(sit, x, t, labels, CFG, guidance_interval=INTERVAL),
            guide(sit, x, t, labels, CFG, guidance_interval=INTERVAL, guidance_t=guidance_t),
        )

    inputs = (noise[:2], t, LABELS[:2].astype("int32"), t[::-1].copy())
    run = keras_sit.backend.compile_inference(sit, outputs)
    guided, cond, default, swapped = (to_numpy(y) for y in run(*map(keras.ops.convert_to_tensor, inputs)))
    assert np.abs(guided - cond).max() > 1e-2
    np.testing.assert_array_equal(default[0], guided[0])
    np.testing.assert_allclose(default[1], cond[1], atol=1e-5, rtol=0)
    np.testing.assert_allclose(swapped[0], cond[0], atol=1e-5, rtol=0)
    np.testing.assert_array_equal(swapped[1], guided[1])


def _grid(num_steps):
    t = np.linspace(1.0, 0.0, num_steps + 1)
    return list(zip(t[:-1], t[1:]))
