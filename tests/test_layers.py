"""Each layer against the NumPy reference written from the official SiT `models.py`."""

import keras
import numpy as np
import pytest

from keras_sit import layers
from keras_sit.backend import fused
from tests import reference
from tests.conftest import to_numpy


def randomize(layer, rng, scale=0.3):
    layer.set_weights([rng.normal(0, scale, size=w.shape).astype("float32") for w in layer.get_weights()])


def test_sincos_2d_matches_official_layout():
    np.testing.assert_allclose(layers.sincos_2d(16, 3, 5), reference.sincos_2d(16, 3, 5), atol=1e-12)


def test_sincos_1d_values():
    table = layers.sincos_1d(8, np.arange(4))
    omega = 1.0 / 10000 ** (np.arange(4) / 4)
    np.testing.assert_allclose(table[3], np.concatenate([np.sin(3 * omega), np.cos(3 * omega)]))


@pytest.mark.parametrize("scale", [1.0, 1000.0])
def test_timestep_sinusoids(scale):
    t = np.array([0.0, 0.25, 0.999], "float32")
    np.testing.assert_allclose(
        to_numpy(layers.timestep_sinusoids(t, 256, scale)), reference.timestep_sinusoids(t, 256, scale), atol=2e-4
    )


def test_patchify_matches_official_order_and_unpatchify_inverts_it(rng):
    x = rng.normal(size=(2, 4, 6, 3)).astype("float32")
    tokens = to_numpy(layers.patchify(x, 2))
    np.testing.assert_array_equal(tokens, reference.patchify(x, 2))
    np.testing.assert_array_equal(to_numpy(layers.Unpatchify(2, (4, 6, 3))(tokens)), x)


def test_unpatchify_learn_sigma_drops_second_half_of_channels(rng):
    tokens = rng.normal(size=(2, 6, 2 * 2 * 6)).astype("float32")  # 3 channels, doubled
    out = to_numpy(layers.Unpatchify(2, (4, 6, 3), learn_sigma=True)(tokens))
    np.testing.assert_allclose(out, reference.unpatchify(tokens, 2, (4, 6, 3), True), atol=0)
    vectors = rng.normal(size=(2, 3, 4)).astype("float32")  # D=6, p=2, doubled
    np.testing.assert_array_equal(
        to_numpy(layers.Unpatchify(2, (6,), learn_sigma=True)(vectors)), vectors[..., 0::2].reshape(2, 6)
    )


def test_attention_matches_softmax_reference(rng):
    layer = layers.Attention(8, 2)
    x = rng.normal(size=(3, 5, 8)).astype("float32")
    layer.build(x.shape)
    randomize(layer, rng)
    np.testing.assert_allclose(
        to_numpy(layer(x)), reference.attention(x.astype("float64"), layer, 2), rtol=1e-4, atol=1e-5
    )


class _ApplyDense(keras.layers.Layer):
    """Calls `fused.dense` from inside a layer, as SiT's layers do (autocast scope included)."""

    def __init__(self, dense, **kwargs):
        super().__init__(**kwargs)
        self.dense = dense

    def call(self, x):
        return fused.dense(self.dense, x)


@pytest.mark.parametrize("policy", ["float32", "mixed_bfloat16"])
@pytest.mark.parametrize("lora", [False, True], ids=["plain", "lora"])
@pytest.mark.parametrize("leading", [(8,), (2, 4), (2, 2, 2)], ids=["2d", "3d", "4d"])
def test_fused_dense_equals_dense(rng, policy, lora, leading):
    # On PyTorch a plain Dense runs as one F.linear; a LoRA Dense must keep its own call.
    dense = keras.layers.Dense(5, dtype=policy)
    dense.build((None, 3))
    randomize(dense, rng)
    if lora:
        dense.enable_lora(2)
        dense.lora_kernel_b.assign(rng.normal(size=dense.lora_kernel_b.shape).astype("float32"))
    x = rng.normal(size=(*leading, 3)).astype("float32")
    expected = dense(x.reshape(8, 3))
    out = _ApplyDense(dense, dtype=policy)(x)
    assert tuple(out.shape) == (*leading, 5)
    assert keras.backend.standardize_dtype(out.dtype) == keras.backend.standardize_dtype(expected.dtype)
    tolerance = 1e-2 if policy == "mixed_bfloat16" else 1e-6
    np.testing.assert_allclose(
        to_numpy(out).astype("float32").reshape(8, 5),
        to_numpy(expected).astype("float32"),
        rtol=tolerance,
        atol=tolerance,
    )


def test_fused_attention_equals_keras_attention(rng):
    # On PyTorch the fused call reads heads-first views; Keras' op copies them first.
    q, k, v = (keras.ops.convert_to_tensor(rng.normal(size=(2, 5, 3, 4)).astype("float32")) for _ in range(3))
    expected = to_numpy(keras.ops.dot_product_attention(q, k, v))
    out = fused.dot_product_attention(q, k, v)
    assert tuple(out.shape) == (2, 5, 3, 4)
    np.testing.assert_allclose(to_numpy(out), expected, rtol=1e-5, atol=1e-6)


def test_fused_attention_in_bf16_with_gradients_equals_float32_attention(rng):
    # A bf16 training step on a CPU takes the explicit matmul path on PyTorch (float32 softmax).
    q, k, v = (rng.normal(size=(2, 16, 3, 8)).astype("float32") for _ in range(3))
    expected = to_numpy(keras.ops.dot_product_attention(q, k, v))
    bf16 = [keras.ops.convert_to_tensor(a, "bfloat16") for a in (q, k, v)]
    if keras.backend.backend() == "torch":
        for tensor in bf16:
            tensor.requires_grad_(True)
    out = fused.dot_product_attention(*bf16)
    assert keras.backend.standardize_dtype(out.dtype) == "bfloat16"
    np.testing.assert_allclose(to_numpy(keras.ops.cast(out, "float32")), expected, rtol=0, atol=0.03)
    if keras.backend.backend() == "torch":  # and its gradient is the float32 one's, to bf16 rounding
        import torch

        out.float().square().sum().backward()
        exact = [torch.tensor(a, requires_grad=True) for a in (q, k, v)]
        torch.nn.functional.scaled_dot_product_attention(*(e.transpose(1, 2) for e in exact)).square().sum().backward()
        for low, high in zip(bf16, exact, strict=True):
            scale = high.grad.abs().max().item()
            np.testing.assert_allclose(low.grad.float().numpy(), high.grad.numpy(), rtol=0, atol=0.05 * scale)


@pytest.mark.parametrize("bad", [None, np.nan, np.inf, -np.inf])
def test_all_finite_finds_any_non_finite_value(rng, bad):
    values = [rng.normal(size=(3, 4)).astype("float32") * 1e30, rng.normal(size=(7,)).astype("float32")]
    if bad is not None:
        values[1][5] = bad
    result = fused.all_finite([keras.ops.convert_to_tensor(v) for v in values])
    assert bool(to_numpy(result)) is (bad is None)


@pytest.mark.parametrize("dtypes", [("float32",) * 3, ("bfloat16", "float32", "bfloat16")], ids=["float32", "mixed"])
def test_add_product_broadcasts_and_promotes_as_keras(rng, dtypes):
    # On PyTorch, equal dtypes run as one addcmul; mixed ones keep Keras' promotion.
    shapes = [(2, 1, 3), (2, 4, 3), (2, 1, 3)]
    x, y, z = (keras.ops.convert_to_tensor(rng.normal(size=shape), dtype) for shape, dtype in zip(shapes, dtypes))
    out = fused.add_product(x, y, z)
    x, y, z = (to_numpy(v).astype("float64") for v in (x, y, z))
    assert tuple(out.shape) == (2, 4, 3)
    assert keras.backend.standardize_dtype(out.dtype) == keras.backend.result_type(*dtypes)
    tolerance = 1e-2 if "bfloat16" in dtypes else 1e-6
    np.testing.assert_allclose(to_numpy(out).astype("float64"), x + y * z, rtol=tolerance, atol=tolerance)


def test_block_matches_reference_and_is_identity_at_zero_modulation(rng):
    block = layers.SiTBlock(8, 2, mlp_ratio=2.0)
    x = rng.normal(size=(3, 5, 8)).astype("float32")
    c = rng.normal(size=(3, 8)).astype("float32")
    block.build(x.shape, c.shape)
    randomize(block, rng)
    np.testing.assert_allclose(
        to_numpy(block(x, c)), reference.block(x.astype("float64"), c.astype("float64"), block), rtol=1e-4, atol=1e-4
    )
    block.adaLN_modulation.set_weights([np.zeros(w.shape, "float32") for w in block.adaLN_modulation.get_weights()])
    np.testing.assert_array_equal(to_numpy(block(x, c)), x)


def test_final_layer_matches_reference(rng):
    layer = layers.FinalLayer(8, 12)
    x = rng.normal(size=(3, 5, 8)).astype("float32")
    c = rng.normal(size=(3, 8)).astype("float32")
    layer.build(x.shape, c.shape)
    randomize(layer, rng)
    np.testing.assert_allclose(
        to_numpy(layer(x, c)),
        reference.final_layer(x.astype("float64"), c.astype("float64"), layer),
        rtol=1e-4,
        atol=1e-4,
    )


def test_patch_embedding_adds_fixed_positions(rng):
    layer = layers.PatchEmbedding(2, 8)
    x = rng.normal(size=(2, 4, 6, 1)).astype("float32")
    out = to_numpy(layer(x))
    assert out.shape == (2, 6, 8)
    assert not layer.position_embedding.trainable
    expected = reference.dense(reference.patchify(x, 2), layer.projection) + reference.sincos_2d(8, 2, 3)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
    vectors = layers.PatchEmbedding(2, 8)
    out = to_numpy(vectors(x.reshape(2, 24)))
    assert out.shape == (2, 12, 8)
    expected = reference.dense(x.reshape(2, 12, 2), vectors.projection) + layers.sincos_1d(8, np.arange(12))
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


def test_label_embedding_null_row():
    with_null = layers.LabelEmbedding(5, 4)
    with_null.build((None,))
    assert with_null.embedding.embeddings.shape == (6, 4)
    without = layers.LabelEmbedding(5, 4, use_null_class=False)
    without.build((None,))
    assert without.embedding.embeddings.shape == (5, 4)


@pytest.mark.parametrize(
    "layer",
    [
        layers.PatchEmbedding(2, 8),
        layers.Unpatchify(2, (4, 6, 3), learn_sigma=True),
        layers.TimestepEmbedding(8, frequency_size=32, time_scale=1.0),
        layers.LabelEmbedding(5, 8, use_null_class=False),
        layers.Attention(8, 2),
        layers.MLP(8, 16),
        layers.SiTBlock(8, 2, mlp_ratio=2.0),
        layers.FinalLayer(8, 12),
    ],
    ids=lambda layer: type(layer).__name__,
)
def test_layer_config_round_trip(layer):
    config = layer.get_config()
    restored = type(layer).from_config(config)
    assert restored.get_config() == config
    serialized = keras.saving.serialize_keras_object(layer)
    assert type(keras.saving.deserialize_keras_object(serialized)) is type(layer)
