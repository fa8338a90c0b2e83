"""MeanFlow: the network of two times, its objective (JVP, official loss), its sampler, and a 2-D toy."""

import keras
import numpy as np
import pytest

import keras_sit
from keras_sit.objectives import MeanFlow
from tests import reference
from tests.conftest import randomize, tiny_autoencoder, tiny_sit, to_numpy
from tests.reference_meanflow import mean_flow_loss

NUM_CLASSES = 3


def mean_flow_sit(objective=None, **overrides):
    config = dict(num_classes=NUM_CLASSES, objectives=[objective or MeanFlow()], time_embedding_scale=1.0)
    config.update(overrides)
    model = tiny_sit(**config)
    randomize(model, np.random.default_rng(1))
    return model


def draws(size=6, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((size, 4, 4, 2)).astype("float32")
    labels = rng.integers(0, NUM_CLASSES, size).astype("int32")
    times = rng.uniform(0.05, 0.95, (2, size)).astype("float32")
    t, r = times.max(0), times.min(0)
    r[: size // 2] = t[: size // 2]  # half of them with r = t
    noise = rng.standard_normal(x.shape).astype("float32")
    dropped = np.arange(size) < 2
    return x, labels, t, r, noise, dropped


def test_backbone_of_two_times_matches_the_reference_and_embeds_t_minus_r():
    model = mean_flow_sit()
    x, labels, t, r, _, _ = draws()
    out = model.backbone({"x_t": x, "t": t, "r": r, "labels": labels})
    expected = reference.backbone(model.backbone, x, t, labels, r=r)
    np.testing.assert_allclose(to_numpy(out), expected, rtol=1e-4, atol=1e-5)
    # Only t - r is seen: shifting t and r together changes t's embedding alone.
    assert model.backbone.interval_time_embedding.name == "h_embedder"
    # Without `r`, the model's network is the velocity: r = t.
    velocity = model.network({"x_t": x, "t": t, "labels": labels})
    np.testing.assert_allclose(to_numpy(velocity), reference.backbone(model.backbone, x, t, labels, r=t), atol=1e-5)


def test_the_total_derivative_matches_central_differences():
    model = mean_flow_sit()
    x, labels, t, r, noise, _ = draws()
    objective = model.objectives[0]
    forward = objective.forward_with(model, x, labels, t, r, noise)
    u, velocity = to_numpy(forward["pred"]), to_numpy(forward["velocity"])
    interval = (t - r)[:, None, None, None]
    du_dt = (to_numpy(forward["velocity"]) - to_numpy(forward["target"])) / np.where(interval > 0, interval, 1.0)
    x_t = to_numpy(forward["x_t"])

    def u_at(shift):
        inputs = {"x_t": x_t + shift * velocity, "t": t + shift, "r": r, "labels": labels}
        return to_numpy(model.network(inputs)).astype("float64")

    step = 1e-2
    differences = (u_at(step) - u_at(-step)) / (2 * step)
    moving = (t - r) > 0  # where r = t the target is v itself and carries no du/dt
    error = np.linalg.norm(du_dt[moving] - differences[moving]) / np.linalg.norm(differences[moving])
    assert error < 1e-3, error
    np.testing.assert_allclose(u, to_numpy(model.network({"x_t": x_t, "t": t, "r": r, "labels": labels})), atol=1e-6)


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"omega": 2.0, "guidance_interval": (0.0, 0.6)},
        {"omega": 1.0, "kappa": 0.5},
        {"omega": 0.2, "kappa": 0.92, "guidance_interval": (0.0, 0.75), "adaptive_power": 0.0},
    ],
    ids=["plain", "omega", "omega-kappa", "xl-recipe"],
)
def test_the_loss_matches_the_official_formula(options):
    objective = MeanFlow(**options)
    model = mean_flow_sit(objective)
    x, labels, t, r, noise, dropped = draws()
    forward = objective.forward_with(model, x, labels, t, r, noise, dropped, training=True)
    loss = float(to_numpy(objective.term({"x": x, "labels": labels}, forward, training=True)))
    lo, hi = objective.guidance_interval
    expected, u, u_tgt = mean_flow_loss(
        model.backbone, x, labels, t, r, noise, dropped, objective.omega, objective.kappa, lo, hi,
        objective.adaptive_power, objective.adaptive_eps,
    )  # fmt: skip
    np.testing.assert_allclose(to_numpy(forward["pred"]), u, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(to_numpy(forward["target"]), u_tgt, rtol=1e-4, atol=1e-4)
    assert abs(loss - expected) <= 1e-5 * abs(expected), (loss, expected)


def test_times_and_label_drops_follow_the_official_draws():
    objective = MeanFlow(flow_fraction=0.75)
    seed = keras.random.SeedGenerator(3)
    t, r = (to_numpy(v) for v in objective.sample_times(64, seed))
    assert np.all(r <= t) and np.all((t > 0) & (t < 1))
    np.testing.assert_array_equal(r[:48], t[:48])  # the first 75% have r = t
    assert np.all(r[48:] < t[48:])
    # logit-normal(-0.4, 1): the median of the smaller of two draws is below sigmoid(-0.4)
    assert np.median(r[48:]) < 1 / (1 + np.exp(0.4)) < np.median(t)
    dropped = to_numpy(objective.sample_drops(1000, 0.1, seed))
    count = int(dropped.sum())
    np.testing.assert_array_equal(dropped, np.arange(1000) < count)  # the first k of the batch
    assert 60 < count < 140


def test_fit_save_load_and_one_step_sampling_give_the_same_images(tmp_path):
    model = mean_flow_sit(MeanFlow(omega=1.0, kappa=0.5))
    x, labels, *_ = draws(size=8)
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    history = model.fit(x, labels, batch_size=4, epochs=2, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))
    one = model.generate(4, labels=[0, 1, 2, 0], seed=5, num_steps=1, verbose=0)
    path = str(tmp_path / "mean_flow.keras")
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    assert isinstance(loaded.objectives[0], MeanFlow) and loaded.objectives[0].kappa == 0.5
    assert loaded.backbone.interval_embedding
    np.testing.assert_array_equal(loaded.generate(4, labels=[0, 1, 2, 0], seed=5, num_steps=1, verbose=0), one)


def test_the_mean_flow_sampler_jumps_with_the_average_velocity():
    model = mean_flow_sit()
    labels = np.array([0, 1, 2, 0])
    noise = np.random.default_rng(4).standard_normal((4, 4, 4, 2)).astype("float32")
    one = model.generate(4, labels=labels, noise=noise, num_steps=1, verbose=0)  # the default sampler
    expected = noise - reference.backbone(model.backbone, noise, np.ones(4), labels, r=np.zeros(4))
    np.testing.assert_allclose(one, expected, rtol=1e-4, atol=1e-4)
    half = noise - 0.5 * reference.backbone(model.backbone, noise, np.ones(4), labels, r=np.full(4, 0.5))
    two = half - 0.5 * reference.backbone(model.backbone, half, np.full(4, 0.5), labels, r=np.zeros(4))
    stepwise = model.generate(4, labels=labels, noise=noise, sampler="mean-flow", num_steps=2, verbose=1)
    np.testing.assert_allclose(stepwise, two, rtol=1e-4, atol=1e-4)


def test_bad_configurations_are_refused():
    with pytest.raises(ValueError, match="prediction='velocity'"):
        mean_flow_sit(prediction="noise")
    with pytest.raises(ValueError, match="null class"):
        tiny_sit(objectives=[MeanFlow(omega=2.0)])
    with pytest.raises(ValueError, match="interval_embedding"):
        tiny_sit(objectives=[MeanFlow()], interval_embedding=False)
    with pytest.raises(ValueError, match="time sampler"):
        tiny_sit(objectives=[MeanFlow()], time_sampler="logit_normal")
    with pytest.raises(ValueError, match="one primary objective"):
        tiny_sit(objectives=[MeanFlow(), keras_sit.objectives.InterpolantLoss()])
    with pytest.raises(ValueError, match="`kappa` must be < 1"):
        MeanFlow(kappa=1.0)
    with pytest.raises(ValueError, match="`flow_fraction`"):
        MeanFlow(flow_fraction=1.5)
    with pytest.raises(ValueError, match="average velocity"):
        tiny_sit().generate(2, sampler="mean-flow", verbose=0)
    with pytest.raises(ValueError, match="`sampler`"):
        mean_flow_sit().encode(np.zeros((2, 4, 4, 2), "float32"), labels=[0, 1], sampler="mean-flow")


CENTERS = np.array([[1, 1], [-1, 1], [1, -1], [-1, -1]], "float32") * 4 / 3


def mode_fractions(samples):
    distance = np.linalg.norm(samples[:, None] - CENTERS[None], axis=-1)
    near = distance.min(axis=1) < 0.6
    return np.bincount(distance.argmin(axis=1)[near], minlength=4) / len(samples)


def test_one_step_samples_match_the_ode_of_the_instantaneous_velocity_on_a_mixture(one_torch_thread):
    rng = np.random.default_rng(0)
    data = CENTERS[rng.integers(0, 4, 4096)] + 0.15 * rng.standard_normal((4096, 2)).astype("float32")
    model = keras_sit.SiT(
        input_dim=2, patch_size=1, hidden_size=32, depth=2, num_heads=2, objectives=[MeanFlow()],
        time_embedding_scale=1.0, seed=0,
    )  # fmt: skip
    steps = 800
    model.compile(optimizer=keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(2e-3, steps)))
    model.fit(data, batch_size=256, epochs=steps * 256 // 4096, verbose=0)
    noise = np.random.default_rng(1).standard_normal((2000, 2)).astype("float32")
    one = model.generate(2000, noise=noise, num_steps=1, verbose=0)
    ode = model.generate(2000, noise=noise, sampler="euler", num_steps=100, verbose=0)
    one_fractions, ode_fractions = mode_fractions(one), mode_fractions(ode)
    assert np.all(ode_fractions > 0.15) and ode_fractions.sum() > 0.9, ode_fractions
    np.testing.assert_allclose(one_fractions, ode_fractions, atol=0.03)
    np.testing.assert_allclose(np.cov(one.T).diagonal(), np.cov(ode.T).diagonal(), rtol=0.25)
    assert np.abs(one - ode).mean() < 0.2  # the same noise lands at the same place


def test_a_latent_sit_trains_with_mean_flow_and_draws_pictures_in_one_step():
    model = keras_sit.LatentSiT(
        autoencoder=tiny_autoencoder(), image_size=16, num_classes=2, objectives=[MeanFlow(omega=1.0, kappa=0.5)],
        patch_size=2, hidden_size=16, depth=1, num_heads=2, seed=0,
    )  # fmt: skip
    latents = np.random.default_rng(0).standard_normal((8, *model.data_shape)).astype("float32")
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    assert np.all(np.isfinite(model.fit(latents, np.arange(8) % 2, batch_size=4, epochs=1, verbose=0).history["loss"]))
    images = model.generate(2, labels=[0, 1], num_steps=1, seed=0)
    assert images.shape == (2, 16, 16, 3) and images.dtype == np.uint8


def test_alignment_reads_the_tokens_of_the_mean_flow_pass_and_trains_with_it():
    alignment = keras_sit.RepresentationAlignment(depth=1, feature_dims=3, projector_dim=8)
    model = mean_flow_sit(objectives=[MeanFlow(), alignment])
    x, labels, t, r, noise, _ = draws()
    forward = model.objectives[0].forward_with(model, x, labels, t, r, noise)
    inputs = {"x_t": to_numpy(forward["x_t"]), "t": t, "r": r, "labels": labels}
    _, tokens = model.backbone.call_with_tokens(inputs, token_depths=(1,))
    np.testing.assert_allclose(to_numpy(forward["tokens"][1]), to_numpy(tokens[1]), rtol=1e-5, atol=1e-6)
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    features = np.random.default_rng(2).standard_normal((6, 4, 3)).astype("float32")
    history = model.fit({"x": x, "features": features}, labels, batch_size=3, epochs=1, verbose=0).history
    assert np.isfinite(history["loss"][0]) and -1.0 <= history["alignment"][0] <= 1.0
