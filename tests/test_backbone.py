"""SiTBackbone: shapes, the whole forward pass against NumPy, initialisation, serialization, bad input."""

import keras
import numpy as np
import pytest

from keras_sit import SiTBackbone
from tests import reference
from tests.conftest import to_numpy

SMALL = dict(patch_size=2, hidden_size=16, depth=2, num_heads=2)


def inputs(rng, data_shape, batch=3, num_classes=None):
    out = {
        "x_t": rng.normal(size=(batch, *data_shape)).astype("float32"),
        "t": rng.uniform(size=batch).astype("float32"),
    }
    if num_classes:
        out["labels"] = rng.integers(0, num_classes, batch).astype("int32")
    return out


def randomize(model, rng):
    """Random values for every trained weight (the position table stays fixed)."""
    for variable in model.trainable_weights:
        variable.assign(rng.normal(0, 0.2, size=variable.shape).astype("float32"))


@pytest.mark.parametrize(
    "kwargs, data_shape",
    [
        (dict(input_shape=(8, 8, 3)), (8, 8, 3)),
        (dict(input_shape=(4, 6, 1)), (4, 6, 1)),  # not square
        (dict(input_dim=6), (6,)),
    ],
)
def test_output_shape_and_exact_zero_at_init(rng, kwargs, data_shape):
    model = SiTBackbone(**kwargs, **SMALL, num_classes=4, seed=1)
    out = to_numpy(model(inputs(rng, data_shape, num_classes=4)))
    assert out.shape == (3, *data_shape)
    np.testing.assert_array_equal(out, 0.0)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(input_shape=(4, 6, 2), num_classes=5, learn_sigma=True, time_embedding_scale=1),
        dict(input_shape=(4, 4, 1), num_classes=None, time_embedding_scale=1000),
        dict(input_dim=6, num_classes=3, learn_sigma=True),
    ],
)
def test_forward_matches_numpy_reference(rng, kwargs):
    model = SiTBackbone(**kwargs, **SMALL, seed=0)
    randomize(model, rng)
    batch = inputs(rng, model.data_shape, num_classes=kwargs.get("num_classes"))
    expected = reference.backbone(model, batch["x_t"], batch["t"], batch.get("labels"))
    np.testing.assert_allclose(to_numpy(model(batch)), expected, rtol=2e-3, atol=2e-3)


def _table(model):
    from keras_sit.layers import sincos_1d, sincos_2d

    if len(model.data_shape) == 1:
        return sincos_1d(model.hidden_size, np.arange(model.data_shape[0] // model.patch_size)).astype("float32")
    h, w, _ = model.data_shape
    return sincos_2d(model.hidden_size, h // model.patch_size, w // model.patch_size).astype("float32")


def test_initialization_follows_official_scheme():
    model = SiTBackbone(
        input_shape=(8, 8, 4), patch_size=2, hidden_size=64, depth=2, num_heads=4, num_classes=10, seed=0
    )
    for block in model.blocks:
        assert not np.any(to_numpy(block.adaLN_modulation.kernel))
        qkv = to_numpy(block.attn.qkv.kernel)
        limit = np.sqrt(6 / (64 + 192))  # fused qkv: fan_out = 3D
        assert np.abs(qkv).max() <= limit and np.abs(qkv).max() > 0.9 * limit
        np.testing.assert_allclose(qkv.var(), limit**2 / 3, rtol=0.1)
        assert not np.any(to_numpy(block.attn.qkv.bias))
    patch = to_numpy(model.patch_embedding.projection.kernel)
    assert patch.shape == (16, 64)
    assert np.abs(patch).max() <= np.sqrt(6 / (16 + 64))
    for variable in (model.label_embedding.embedding.embeddings, model.time_embedding.dense_in.kernel):
        np.testing.assert_allclose(to_numpy(variable).std(), 0.02, rtol=0.1)
    for dense in (model.final_layer.linear, model.final_layer.adaLN_modulation):
        assert not np.any(to_numpy(dense.kernel)) and not np.any(to_numpy(dense.bias))
    np.testing.assert_allclose(to_numpy(model.patch_embedding.position_embedding), _table(model))


def test_same_seed_same_weights_other_seed_other_weights():
    a, b, c = (SiTBackbone(input_dim=4, **SMALL, seed=s) for s in (3, 3, 4))
    for wa, wb in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_array_equal(wa, wb)
    assert not np.allclose(a.blocks[0].attn.qkv.get_weights()[0], c.blocks[0].attn.qkv.get_weights()[0])


def test_official_parameter_count_sit_s2():
    model = SiTBackbone(
        input_shape=(32, 32, 4),
        patch_size=2,
        hidden_size=384,
        depth=12,
        num_heads=6,
        num_classes=1000,
        learn_sigma=True,
        seed=0,
    )
    assert model.count_params() == 32_963_360  # official SiT-S/2, pos_embed included
    assert len(model.trainable_weights) + len(model.non_trainable_weights) == 12 + 10 * 12  # official key count


def test_save_load_round_trip(tmp_path, rng):
    model = SiTBackbone(input_shape=(4, 6, 2), **SMALL, num_classes=3, learn_sigma=True, seed=0)
    randomize(model, rng)
    batch = inputs(rng, (4, 6, 2), num_classes=3)
    path = str(tmp_path / "backbone.keras")
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    assert isinstance(loaded, SiTBackbone) and loaded.get_config() == model.get_config()
    np.testing.assert_array_equal(to_numpy(loaded(batch)), to_numpy(model(batch)))


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(), ValueError, "exactly one of `input_shape`"),
        (dict(input_shape=(8, 8, 1), input_dim=4), ValueError, "exactly one of `input_shape`"),
        (dict(input_shape=(8, 8)), ValueError, "`input_shape` must be"),
        (dict(input_shape=(9, 8, 1)), ValueError, "divisible by `patch_size`"),
        (dict(input_shape=(8, 8, 0)), ValueError, "input_shape channels"),
        (dict(input_dim=5), ValueError, "`input_dim` .5. must be divisible"),
        (dict(input_dim=-4), ValueError, "`input_dim` must be a positive int"),
        (dict(input_dim=4, hidden_size=18, num_heads=4), ValueError, "divisible by `num_heads`"),
        (dict(input_shape=(8, 8, 1), hidden_size=18, num_heads=2), ValueError, "divisible by 4"),
        (dict(input_dim=4, hidden_size=0), ValueError, "`hidden_size` must be a positive int"),
        (dict(input_dim=4, depth=2.0), TypeError, "`depth` must be a positive int"),
        (dict(input_dim=4, patch_size="2"), TypeError, "`patch_size`"),
        (dict(input_dim=4, num_classes=0), ValueError, "`num_classes`"),
        (dict(input_dim=4, class_dropout_prob=1.5), ValueError, "`class_dropout_prob`"),
        (dict(input_dim=4, time_embedding_scale=0), ValueError, "`time_embedding_scale`"),
        (dict(input_dim=4, mlp_ratio=0), ValueError, "`mlp_ratio`"),
    ],
)
def test_bad_arguments(kwargs, error, match):
    config = dict(patch_size=2, hidden_size=16, depth=1, num_heads=2)
    config.update(kwargs)
    with pytest.raises(error, match=match):
        SiTBackbone(**config)
