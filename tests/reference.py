"""A plain NumPy SiT forward pass, written from the official SiT `models.py`, to check the Keras layers against."""

import math

import numpy as np


def layer_norm(x, eps=1e-6):
    mean = x.mean(-1, keepdims=True)
    var = x.var(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps)


def silu(x):
    return x / (1 + np.exp(-x))


def gelu_tanh(x):
    return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))


def dense(x, layer):
    kernel, bias = (np.asarray(w, dtype="float64") for w in layer.get_weights())
    return x @ kernel + bias


def attention(x, layer, num_heads):
    batch, tokens, dim = x.shape
    head = dim // num_heads
    qkv = dense(x, layer.qkv).reshape(batch, tokens, 3, num_heads, head)
    q, k, v = (qkv[:, :, i].transpose(0, 2, 1, 3) for i in range(3))  # B, H, T, dh
    logits = q @ k.transpose(0, 1, 3, 2) / math.sqrt(head)
    weights = np.exp(logits - logits.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    out = (weights @ v).transpose(0, 2, 1, 3).reshape(batch, tokens, dim)
    return dense(out, layer.proj)


def block(x, c, layer):
    m = dense(silu(c), layer.adaLN_modulation)
    shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = np.split(m, 6, axis=-1)
    h = layer_norm(x) * (1 + scale_msa[:, None]) + shift_msa[:, None]
    x = x + gate_msa[:, None] * attention(h, layer.attn, layer.num_heads)
    h = layer_norm(x) * (1 + scale_mlp[:, None]) + shift_mlp[:, None]
    return x + gate_mlp[:, None] * dense(gelu_tanh(dense(h, layer.mlp.fc1)), layer.mlp.fc2)


def final_layer(x, c, layer):
    shift, scale = np.split(dense(silu(c), layer.adaLN_modulation), 2, axis=-1)
    return dense(layer_norm(x) * (1 + scale[:, None]) + shift[:, None], layer.linear)


def timestep_sinusoids(t, dim=256, scale=1.0):
    half = dim // 2
    out = np.zeros((len(t), dim))
    for n, tn in enumerate(t):
        for k in range(half):
            freq = math.exp(-math.log(10000) * k / half)
            out[n, k] = math.cos(scale * tn * freq)
            out[n, half + k] = math.sin(scale * tn * freq)
    return out


def sincos_2d(dim, grid_h, grid_w):
    """Token r*w+c, channel k: column index in the first half, row in the second; sin block first."""
    quarter = dim // 4
    table = np.zeros((grid_h * grid_w, dim))
    for r in range(grid_h):
        for c in range(grid_w):
            for k in range(quarter):
                omega = 1.0 / 10000 ** (k / quarter)
                n = r * grid_w + c
                table[n, k], table[n, quarter + k] = math.sin(c * omega), math.cos(c * omega)
                table[n, 2 * quarter + k], table[n, 3 * quarter + k] = math.sin(r * omega), math.cos(r * omega)
    return table


def patchify(x, p):
    """Official PatchEmbed order: token r*w+c, value (i*p+j)*C+ch = x[r*p+i, c*p+j, ch]."""
    batch, height, width, channels = x.shape
    h, w = height // p, width // p
    out = np.zeros((batch, h * w, p * p * channels))
    for r in range(h):
        for c in range(w):
            for i in range(p):
                for j in range(p):
                    out[:, r * w + c, (i * p + j) * channels : (i * p + j + 1) * channels] = x[:, r * p + i, c * p + j]
    return out


def unpatchify(tokens, p, data_shape, learn_sigma):
    """Inverse of `patchify` (images) or of the vector split, dropping the sigma half."""
    out_channels = 2 if learn_sigma else 1
    if len(data_shape) == 1:
        return tokens.reshape(tokens.shape[0], -1, p, out_channels)[..., 0].reshape(tokens.shape[0], -1)
    height, width, channels = data_shape
    out_channels *= channels
    h, w = height // p, width // p
    out = np.zeros((tokens.shape[0], height, width, out_channels))
    for r in range(h):
        for c in range(w):
            for i in range(p):
                for j in range(p):
                    start = (i * p + j) * out_channels
                    out[:, r * p + i, c * p + j] = tokens[:, r * w + c, start : start + out_channels]
    return out[..., :channels]


def backbone(model, x, t, labels=None, token_depth=None, r=None):
    """The whole network in NumPy (float64) with a `SiTBackbone`'s weights.

    With `token_depth` k, returns `(output, tokens after the k-th block)`.
    A backbone with an interval embedding also adds MeanFlow's embedding of
    `t - r` (`r = t` if None) to the conditioning.
    """
    import keras

    x = np.asarray(x, "float64")
    p = model.patch_size
    tokens = x.reshape(x.shape[0], -1, p) if x.ndim == 2 else patchify(x, p)
    position = keras.ops.convert_to_numpy(model.patch_embedding.position_embedding).astype("float64")
    h = dense(tokens, model.patch_embedding.projection) + position
    te = model.time_embedding
    c = dense(silu(dense(timestep_sinusoids(t, te.frequency_size, te.time_scale), te.dense_in)), te.dense_out)
    he = model.interval_time_embedding
    if he is not None:
        interval = np.asarray(t, "float64") - np.asarray(t if r is None else r, "float64")
        c = c + dense(
            silu(dense(timestep_sinusoids(interval, he.frequency_size, he.time_scale), he.dense_in)), he.dense_out
        )
    if labels is not None:
        table = keras.ops.convert_to_numpy(model.label_embedding.embedding.embeddings).astype("float64")
        c = c + table[np.asarray(labels)]
    tokens = None
    for depth, layer in enumerate(model.blocks, start=1):
        h = block(h, c, layer)
        if depth == token_depth:
            tokens = h
    output = unpatchify(final_layer(h, c, model.final_layer), p, model.data_shape, model.learn_sigma)
    return output if token_depth is None else (output, tokens)
