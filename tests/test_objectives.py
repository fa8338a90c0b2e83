"""The objective seam: an extra loss term on block k's tokens, with its own layer and per-example input."""

import keras
import numpy as np
import pytest
from keras import ops

import keras_sit
from keras_sit.objectives import InterpolantLoss, Objective
from tests.conftest import randomize, tiny_sit, to_numpy

TOKENS = 4  # tiny_sit: a 4x4 image in 2x2 patches
UNITS = 3


@keras.saving.register_keras_serializable(package="keras_sit_tests")
class TokenRegression(Objective):
    """`mean((Dense(tokens after block `depth`) - features)^2)`: a projector regressed on per-example features."""

    extra_inputs = ("features",)

    def __init__(self, depth=1, units=UNITS, weight=0.5, **kwargs):
        super().__init__(weight=weight, **kwargs)
        self.depth = depth
        self.units = units
        self.token_depths = (depth,)
        self.projector = keras.layers.Dense(units, name="projector")

    def build(self, token_shape):
        self.projector.build((None, *token_shape))

    def term(self, batch, forward, training=False):
        projected = self.projector(forward["tokens"][self.depth])
        return ops.mean(ops.square(projected - ops.cast(batch["features"], "float32")))

    def get_config(self):
        return {**super().get_config(), "depth": self.depth, "units": self.units}


def batch(seed=0, size=4):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((size, 4, 4, 2)).astype("float32")
    features = rng.standard_normal((size, TOKENS, UNITS)).astype("float32")
    return {"x": x, "features": features}


def model_with_objective(**overrides):
    model = tiny_sit(objectives=[TokenRegression(name="token_regression")], **overrides)
    randomize(model, np.random.default_rng(1))
    return model


def test_backbone_returns_the_tokens_of_its_blocks_from_one_forward_pass():
    model = model_with_objective()
    backbone = model.backbone
    rng = np.random.default_rng(2)
    inputs = {"x_t": rng.standard_normal((3, 4, 4, 2)).astype("float32"), "t": rng.uniform(size=3).astype("float32")}
    output, tokens = backbone.call_with_tokens(inputs, token_depths=(1, 2))
    np.testing.assert_allclose(to_numpy(output), to_numpy(backbone(inputs)), rtol=1e-5, atol=1e-6)
    c = backbone.time_embedding(inputs["t"])
    first = backbone.blocks[0](backbone.patch_embedding(inputs["x_t"]), c)
    np.testing.assert_allclose(to_numpy(tokens[1]), to_numpy(first), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(to_numpy(tokens[2]), to_numpy(backbone.blocks[1](first, c)), rtol=1e-5, atol=1e-6)
    assert backbone.token_shape == (TOKENS, 16)


def test_the_loss_is_the_interpolant_loss_plus_the_weighted_term():
    model = model_with_objective()
    data = batch()
    forward = model(data, training=False)
    loss = float(to_numpy(model.compute_loss(x=data, y_pred=forward, training=False)))
    mse = np.mean((to_numpy(forward["pred"]) - to_numpy(forward["target"])) ** 2)
    projector = model.objectives[1].projector
    projected = to_numpy(forward["tokens"][1]) @ to_numpy(projector.kernel) + to_numpy(projector.bias)
    penalty = np.mean((projected - data["features"]) ** 2)
    np.testing.assert_allclose(loss, mse + 0.5 * penalty, rtol=1e-5)
    assert isinstance(model.objectives[0], InterpolantLoss)


def test_fit_trains_the_objectives_layer_and_logs_its_term(tmp_path):
    model = model_with_objective()
    # A frozen backbone keeps the tokens' distribution fixed, so the regression term can only fall as
    # the projector learns; with the backbone training too, a few noisy steps may go either way.
    model.backbone.trainable = False
    model.compile(optimizer=keras.optimizers.Adam(3e-2))
    kernel = to_numpy(model.objectives[1].projector.kernel).copy()
    backbone = [to_numpy(w).copy() for w in model.backbone.weights]
    data = batch(size=8)
    history = model.fit(data, batch_size=4, epochs=6, verbose=0, shuffle=False)
    assert set(history.history) == {"loss", "token_regression"}
    term = history.history["token_regression"]
    assert np.mean(term[-2:]) < 0.9 * np.mean(term[:2]), term
    assert not np.allclose(to_numpy(model.objectives[1].projector.kernel), kernel)
    for before, after in zip(backbone, model.backbone.weights, strict=True):
        np.testing.assert_array_equal(to_numpy(after), before)
    model.backbone.trainable = True

    path = tmp_path / "objective.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    assert isinstance(loaded.objectives[1], TokenRegression) and loaded.objectives[1].weight == 0.5
    for a, b in zip(loaded.weights, model.weights, strict=True):
        np.testing.assert_array_equal(to_numpy(a), to_numpy(b))
    # Same weights and noise state: the same next draws, hence the same loss.
    want = to_numpy(model.compute_loss(x=data, y_pred=model(data), training=False))
    got = to_numpy(loaded.compute_loss(x=data, y_pred=loaded(data), training=False))
    np.testing.assert_allclose(got, want, rtol=1e-6)
    loaded.fit(data, batch_size=4, epochs=1, verbose=0)  # training goes on


def test_objectives_are_checked():
    with pytest.raises(TypeError, match="`objectives` must be `keras_sit.objectives.Objective`s"):
        tiny_sit(objectives=[keras.layers.Dense(2)])
    with pytest.raises(ValueError, match="distinct names"):
        tiny_sit(objectives=[TokenRegression(name="a"), TokenRegression(name="a")])
    with pytest.raises(ValueError, match="`weight` must be"):
        TokenRegression(weight=-1.0)
    model = model_with_objective()
    with pytest.raises(ValueError, match="objectives read the per-example input 'features'"):
        model.compute_loss(x={"x": batch()["x"]}, y_pred=model(batch()))
    assert keras_sit.SiT(input_dim=8, hidden_size=8, depth=1, num_heads=2, patch_size=2).backbone.token_shape == (4, 8)
