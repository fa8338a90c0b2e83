"""`RepresentationAlignment` (REPA, iREPA) against REPA's own loss, and as a part of `fit` and `save`."""

import keras
import numpy as np
import pytest

from keras_sit.objectives import RepresentationAlignment
from tests.conftest import randomize, tiny_sit, to_numpy
from tests.reference_repa import repa_loss

SIDE, TOKENS = 8, 16  # an 8x8 image in 2x2 patches: a 4x4 grid of tokens


def aligned_sit(objective, num_classes=None):
    model = tiny_sit(input_shape=(SIDE, SIDE, 3), depth=3, objectives=[objective], num_classes=num_classes)
    rng = np.random.default_rng(1)
    randomize(model, rng)
    for variable in objective.weights:
        variable.assign(rng.normal(0, 0.3, size=variable.shape).astype("float32"))
    return model


def batch(dims=(6,), size=4, seed=0, keys=None):
    rng = np.random.default_rng(seed)
    data = {"x": rng.standard_normal((size, SIDE, SIDE, 3)).astype("float32")}
    for key, dim in zip(keys or ("features",), dims):
        data[key] = rng.standard_normal((size, TOKENS, dim)).astype("float32")
    return data


@pytest.mark.parametrize(
    "settings",
    [
        dict(depth=2, feature_dims=6, projector_dim=12),
        dict(depth=1, feature_dims=(6, 5), feature_keys=("dino", "mae"), projector_dim=8),  # two teachers
        dict(depth=2, feature_dims=6, projector="conv", spatial_normalization=0.6, weight=1.0),  # iREPA
    ],
    ids=["repa", "two_teachers", "irepa"],
)
def test_loss_and_term_equal_repas_code(settings):
    objective = RepresentationAlignment(**settings)
    model = aligned_sit(objective, num_classes=3)
    data = batch(objective.feature_dims, keys=objective.feature_keys)
    labels = np.array([0, 2, 1, 1])
    forward = model({**data, "labels": labels}, training=False)  # t, noise: the model's own draws
    loss = model.compute_loss(x={**data, "labels": labels}, y_pred=forward, training=False)
    term = objective.term(model._batch(data), forward)
    want_loss, want_term = repa_loss(
        model.backbone,
        objective,
        data["x"],
        to_numpy(forward["t"]),
        to_numpy(forward["noise"]),
        [data[key] for key in objective.feature_keys],
        labels=labels,
        proj_coeff=objective.weight,
    )
    np.testing.assert_allclose(float(to_numpy(term)), want_term, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(float(to_numpy(loss)), want_loss, rtol=1e-5)


def test_an_online_teacher_gives_the_loss_of_its_cached_features():
    teacher = keras.Sequential([keras.layers.Conv2D(6, 2, strides=2), keras.layers.Reshape((TOKENS, 6))])
    teacher.build((None, SIDE, SIDE, 3))
    images = np.random.default_rng(3).uniform(0, 255, (4, SIDE, SIDE, 3)).astype("float32")
    features = to_numpy(teacher(images))
    cached = RepresentationAlignment(depth=2, feature_dims=6, projector_dim=8)
    model = aligned_sit(cached)
    data = batch()
    forward = model(data, training=False)
    want = to_numpy(cached.term(model._batch({**data, "features": features}), forward))

    cached.set_teachers([teacher])
    assert model.extra_inputs == ("images",)
    online = {"x": data["x"], "images": images}
    got = to_numpy(model.compute_loss(x=online, y_pred=forward, training=False))
    interpolant = to_numpy(model.objectives[0].term(model._batch(online), forward))
    np.testing.assert_allclose(got, interpolant + 0.5 * want, rtol=1e-6)


def test_fit_trains_the_projector_logs_the_term_and_save_keeps_it_without_the_teacher(tmp_path):
    teacher = keras.Sequential([keras.layers.Conv2D(6, 2, strides=2), keras.layers.Reshape((TOKENS, 6))])
    teacher.build((None, SIDE, SIDE, 3))
    objective = RepresentationAlignment(depth=2, feature_dims=6, projector_dim=8, teachers=teacher, image_key="x")
    model = aligned_sit(objective)
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
    projector = [to_numpy(w).copy() for w in objective.weights]
    teacher_weights = [to_numpy(w).copy() for w in teacher.weights]
    data = batch(size=8)["x"]
    history = model.fit(data, batch_size=4, epochs=2, verbose=0)
    assert set(history.history) == {"loss", "alignment"}
    assert all(-1.0 <= value <= 1.0 for value in history.history["alignment"])
    assert not any(np.allclose(to_numpy(w), before) for w, before in zip(objective.weights, projector))
    for w, before in zip(teacher.weights, teacher_weights, strict=True):
        np.testing.assert_array_equal(to_numpy(w), before)  # frozen: not among the model's weights
    assert len(model.weights) == len(tiny_sit(input_shape=(SIDE, SIDE, 3), depth=3).weights) + len(objective.weights)

    path = tmp_path / "repa.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    restored = loaded.objectives[1]
    assert isinstance(restored, RepresentationAlignment) and restored.teachers is None
    assert restored.get_config() == objective.get_config()
    for a, b in zip(loaded.weights, model.weights, strict=True):
        np.testing.assert_array_equal(to_numpy(a), to_numpy(b))
    # Without its teacher, the loaded model reads the tokens from the batch; given it again, from `x`.
    assert loaded.extra_inputs == ("features",)
    restored.set_teachers(teacher)
    want = to_numpy(model.compute_loss(x=data, y_pred=model(data), training=False))
    got = to_numpy(loaded.compute_loss(x=data, y_pred=loaded(data), training=False))
    np.testing.assert_allclose(got, want, rtol=1e-6)
    loaded.fit(data, batch_size=4, epochs=1, verbose=0)


def test_mixed_precision_keeps_the_term_in_float32():
    objective = RepresentationAlignment(depth=2, feature_dims=6, projector_dim=8, dtype="mixed_bfloat16")
    model = aligned_sit(objective)
    data = batch()
    forward = model(data, training=False)
    term = objective.term(model._batch(data), forward)
    assert keras.backend.standardize_dtype(term.dtype) == "float32"
    full = RepresentationAlignment(depth=2, feature_dims=6, projector_dim=8)
    full.build(model.backbone.token_shape)
    for a, b in zip(full.weights, objective.weights, strict=True):
        a.assign(b)
    np.testing.assert_allclose(to_numpy(term), to_numpy(full.term(model._batch(data), forward)), atol=2e-2)


def test_bad_settings_and_features_are_named():
    with pytest.raises(ValueError, match="`feature_keys` must name one batch key"):
        RepresentationAlignment(feature_dims=(4, 5))
    with pytest.raises(ValueError, match="`feature_keys`"):
        RepresentationAlignment(feature_dims=4, feature_keys=("x",))
    with pytest.raises(ValueError, match="`feature_dims`"):
        RepresentationAlignment(feature_dims=0)
    with pytest.raises(ValueError, match="`projector` must be one of"):
        RepresentationAlignment(projector="transformer")
    with pytest.raises(TypeError, match="`depth`"):
        RepresentationAlignment(depth=2.5)
    with pytest.raises(ValueError, match="`teachers` must be 2 callable"):
        RepresentationAlignment(feature_dims=(4, 5), feature_keys=("a", "b"), teachers=[lambda x: x])
    with pytest.raises(ValueError, match=r"reads the tokens of block\(s\) \[8\]; this SiT has blocks 1 to 2"):
        tiny_sit(objectives=[RepresentationAlignment(depth=8)])
    with pytest.raises(ValueError, match="square grid"):
        tiny_sit(input_shape=(4, 8, 2), objectives=[RepresentationAlignment(depth=1, projector="conv")])
    objective = RepresentationAlignment(depth=2, feature_dims=6, projector_dim=8)
    model = aligned_sit(objective)
    data = batch()
    with pytest.raises(ValueError, match=r"must be \[batch, 16, 6\]"):
        model.compute_loss(x={**data, "features": data["features"][:, :9]}, y_pred=model(data), training=False)
    with pytest.raises(ValueError, match="read the per-example input 'features'"):
        model.compute_loss(x=data["x"], y_pred=model(data), training=False)
