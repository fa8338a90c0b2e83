"""Official PyTorch SiT checkpoints in and out.

`import_official_checkpoint` reads a state dict in the layout of the official
`models.py` (the released `SiT-XL-2-256x256.pt`, or a `train.py` checkpoint,
whose EMA weights it takes) and returns a `SiT` with the same weights;
`export_official_state_dict` writes that layout back (float32 NumPy arrays,
the official keys, shapes and order). Linear weights are `(out, in)`, so a
Dense kernel is `W.T`; the patch convolution `(D, C, p, p)` is our Dense on
patches flattened in (row, column, channel) order, kernel
`W.transpose(2, 3, 1, 0).reshape(p*p*C, D)`; the fused `qkv` has the same row
layout in both.

The weights are converted faithfully: with
`y = sit.backbone({"x_t": x, "t": t, "labels": labels})` on channels-last
`x`, `y` equals the official `net(x_nchw, t, labels)` transposed to NHWC (the
model is built with `time_embedding_scale=1`, because the official network embeds raw
`t`). The official time runs the other way (t = 1 is data there, t = 0 in
keras_sit) and its velocity has the opposite sign, so the imported `SiT` has
`time_convention="official"`: its `network`, and with it training,
`velocity` and `generate`, feeds the backbone `1 - t` and negates a velocity
output. Also: the official `Linear` path is keras_sit's `"linear"`, `GVP` is
`"cosine"`; the official sampler guides the first three channels only
(`guidance_channels=3`); the null class is label `num_classes` in both.

Loading never runs pickled code: `.pt` files are read with
`torch.load(..., weights_only=True)`, which admits tensors, plain containers
and, explicitly, the `argparse.Namespace` that `train.py` stores.
"""

import argparse
import math
import os

import numpy as np
from keras import ops

from keras_sit.convert.checkpoints import float32_arrays, read_checkpoint
from keras_sit.model import SiT
from keras_sit.presets import OFFICIAL_NUM_HEADS
from keras_sit.validation import resolve_depth_alias

# Overrides that describe the network; everything else goes to `SiT` as is.
_INFERRED = ("patch_size", "hidden_size", "depth", "mlp_ratio")


def sit_variables(backbone):
    """`(key, variable, kind)` for every key of the official SiT layout, in PyTorch's order.

    REPA's SiT uses the same keys (plus its projectors, and timm's
    `attn.q_norm`/`attn.k_norm` when `qk_norm`). `kind` says how the PyTorch
    array maps onto the Keras variable: "dense" (transpose), "patch" (conv
    weight), "position" (leading 1) or "plain" (biases, norms and the label
    table, as is).
    """
    items = [("pos_embed", backbone.patch_embedding.position_embedding, "position")]
    projection = backbone.patch_embedding.projection
    items += [
        ("x_embedder.proj.weight", projection.kernel, "patch"),
        ("x_embedder.proj.bias", projection.bias, "plain"),
    ]

    def dense(prefix, layer):
        return [(f"{prefix}.weight", layer.kernel, "dense"), (f"{prefix}.bias", layer.bias, "plain")]

    def norm(prefix, layer):
        return [(f"{prefix}.weight", layer.gamma, "plain"), (f"{prefix}.bias", layer.beta, "plain")]

    items += dense("t_embedder.mlp.0", backbone.time_embedding.dense_in)
    items += dense("t_embedder.mlp.2", backbone.time_embedding.dense_out)
    if backbone.label_embedding is not None:
        items.append(("y_embedder.embedding_table.weight", backbone.label_embedding.embedding.embeddings, "plain"))
    for i, block in enumerate(backbone.blocks):
        items += dense(f"blocks.{i}.attn.qkv", block.attn.qkv)
        if block.attn.qk_norm:
            items += norm(f"blocks.{i}.attn.q_norm", block.attn.q_norm)
            items += norm(f"blocks.{i}.attn.k_norm", block.attn.k_norm)
        items += dense(f"blocks.{i}.attn.proj", block.attn.proj)
        items += dense(f"blocks.{i}.mlp.fc1", block.mlp.fc1)
        items += dense(f"blocks.{i}.mlp.fc2", block.mlp.fc2)
        items += dense(f"blocks.{i}.adaLN_modulation.1", block.adaLN_modulation)
    items += dense("final_layer.linear", backbone.final_layer.linear)
    items += dense("final_layer.adaLN_modulation.1", backbone.final_layer.adaLN_modulation)
    return items


def to_torch_layout(value, kind, patch_size, channels):
    """A Keras variable's value (NumPy) in the PyTorch layout of its `kind` (see `sit_variables`)."""
    value = np.asarray(value, dtype=np.float32)
    if kind == "dense":
        value = value.T
    elif kind == "patch":  # (p*p*C, D) -> (D, C, p, p)
        value = value.reshape(patch_size, patch_size, channels, -1).transpose(3, 2, 0, 1)
    elif kind == "position":
        value = value[None]
    return np.ascontiguousarray(value)


def from_torch_layout(value, kind, patch_size, channels):
    """The inverse of `to_torch_layout`."""
    if kind == "dense":
        return value.T
    if kind == "patch":
        return value.transpose(2, 3, 1, 0).reshape(patch_size * patch_size * channels, -1)
    if kind == "position":
        return value[0]
    return value


def export_official_state_dict(sit):
    """The official state dict (`{key: float32 array}`) of a `SiT` or `SiTBackbone`.

    Conditional image models give the official 12 + 10 * depth keys;
    unconditional ones have no `y_embedder` key. `torch.save` of
    `{k: torch.from_numpy(v)}` gives a file the official code loads (square
    images; it cannot build other grids).
    """
    backbone = getattr(sit, "backbone", sit)
    if not hasattr(backbone, "patch_embedding"):
        raise TypeError(f"`sit` must be a keras_sit SiT or SiTBackbone; got {type(sit).__name__}.")
    if len(backbone.data_shape) != 3:
        raise ValueError("`sit` works on vectors (input_dim); the official layout exists only for images.")
    if backbone.qk_norm:
        raise ValueError(
            "`sit` normalises queries and keys (qk_norm=True), which the official SiT cannot: "
            "`keras_sit.convert.export_repa_state_dict` writes REPA's layout, which can."
        )
    p, channels = backbone.patch_size, backbone.data_shape[2]
    return {
        key: to_torch_layout(ops.convert_to_numpy(variable), kind, p, channels)
        for key, variable, kind in sit_variables(backbone)
    }


def _load(source):
    """A state dict of NumPy float32 arrays from a path or a (checkpoint) dict."""
    if isinstance(source, (str, os.PathLike)):
        source = read_checkpoint(source, allowed_globals=[argparse.Namespace])
    if not isinstance(source, dict):
        raise TypeError(f"`source` must be a path to a .pt file or a state dict; got {type(source).__name__}.")
    arguments = source.get("args")
    for wrapper in ("ema", "model"):  # a train.py checkpoint; sampling uses the EMA weights, as upstream
        if isinstance(source.get(wrapper), dict):
            source = source[wrapper]
            break
    source = strip_data_parallel_prefix(source)
    if is_repa_checkpoint(source, arguments):
        raise ValueError(
            "`source` is a REPA checkpoint (projectors, q/k norms, decoder blocks or REPA's training "
            "arguments): REPA's SiT runs in keras_sit's time, not the official one. Load it with "
            "`keras_sit.convert.import_repa_checkpoint`."
        )
    return float32_arrays(source)


def strip_data_parallel_prefix(state):
    """`state` without the `module.` prefix that DistributedDataParallel puts on every key."""
    if state and all(str(key).startswith("module.") for key in state):
        return {key[len("module.") :]: value for key, value in state.items()}
    return state


REPA_KEY_MARKS = ("projectors.", "decoder_blocks.", ".attn.q_norm.", ".attn.k_norm.")
REPA_ARGUMENTS = ("encoder_depth", "proj_coeff", "enc_type")


def is_repa_checkpoint(state, arguments=None):
    """Whether a state dict (and `train.py` arguments) come from REPA rather than the official SiT.

    REPA's keys are the official ones plus its projectors, timm's q/k norms
    and, in its legacy layout, decoder blocks; its `train.py` stores
    arguments that the official one has not. A REPA state dict stripped of
    all of these has the official keys and cannot be told apart.
    """
    if any(mark in str(key) for key in state for mark in REPA_KEY_MARKS):
        return True
    return arguments is not None and any(hasattr(arguments, name) for name in REPA_ARGUMENTS)


def _shape(state, key, ndim):
    if key not in state:
        raise ValueError(f"`source` is not an official SiT state dict: no key {key!r}.")
    if state[key].ndim != ndim:
        raise ValueError(f"`source[{key!r}]` must have {ndim} dimensions; got shape {state[key].shape}.")
    return state[key].shape


def _infer_config(state, input_channels, overrides):
    """The `SiT` arguments that the shapes of `state` (plus `overrides`) imply."""
    hidden, channels, p, p_w = _shape(state, "x_embedder.proj.weight", 4)
    if p != p_w:
        raise ValueError(f"Patches must be square; `x_embedder.proj.weight` has shape {(hidden, channels, p, p_w)}.")
    if input_channels is not None and input_channels != channels:
        raise ValueError(
            f"`input_channels` is {input_channels}, but the checkpoint's patch projection takes {channels}."
        )
    _, tokens, _ = _shape(state, "pos_embed", 3)
    depth = len({key.split(".")[1] for key in state if key.startswith("blocks.")})
    mlp_hidden = _shape(state, "blocks.0.mlp.fc1.weight", 2)[0] if depth else 4 * hidden
    out_rows = _shape(state, "final_layer.linear.weight", 2)[0]
    if out_rows not in (p * p * channels, 2 * p * p * channels):
        raise ValueError(f"`final_layer.linear.weight` has {out_rows} rows; expected p*p*C or 2*p*p*C.")
    config = {
        "patch_size": int(p),
        "hidden_size": int(hidden),
        "depth": depth,
        "mlp_ratio": mlp_hidden / hidden,
        "learn_sigma": out_rows == 2 * p * p * channels,
    }
    for key in _INFERRED:
        if key in overrides and overrides[key] != config[key]:
            raise ValueError(f"`{key}`={overrides[key]!r} contradicts the checkpoint, which has {config[key]!r}.")
    if overrides.get("learn_sigma") is True and not config["learn_sigma"]:
        raise ValueError("`learn_sigma=True` needs a checkpoint with 2*C output channels; this one has C.")
    config["learn_sigma"] = overrides.get("learn_sigma", config["learn_sigma"])

    # The official code assumes a square grid; `input_shape` may name another one with the same tokens.
    input_shape = overrides.get("input_shape")
    if input_shape is None:
        side = math.isqrt(tokens)
        if side * side != tokens:
            raise ValueError(
                f"`pos_embed` has {tokens} tokens, not a square grid: pass `input_shape=(H, W, {channels})`."
            )
        input_shape = (side * p, side * p, channels)
    elif len(input_shape) != 3 or input_shape[2] != channels or (input_shape[0] // p) * (input_shape[1] // p) != tokens:
        raise ValueError(f"`input_shape` {input_shape!r} does not fit {tokens} tokens of {p}x{p}x{channels} patches.")
    config["input_shape"] = tuple(int(v) for v in input_shape)

    # K classes plus the null row iff class_dropout_prob > 0. Rows alone cannot tell K from K + 1,
    # so the official case (a null row) is the default and `num_classes` or `class_dropout_prob` decide.
    key = "y_embedder.embedding_table.weight"
    num_classes, dropout = overrides.get("num_classes"), overrides.get("class_dropout_prob")
    if key not in state:
        if num_classes is not None:
            raise ValueError(f"`num_classes`={num_classes}, but the checkpoint has no label table (unconditional).")
        config.update(num_classes=None, class_dropout_prob=0.1 if dropout is None else dropout)
    else:
        rows = _shape(state, key, 2)[0]
        has_null = None if num_classes is None else {rows - 1: True, rows: False}.get(num_classes)
        if num_classes is not None and has_null is None:
            raise ValueError(
                f"`num_classes`={num_classes} does not fit a label table of {rows} rows ({rows - 1} or {rows})."
            )
        if dropout is not None:
            if has_null is not None and has_null != (dropout > 0):
                raise ValueError(
                    f"`num_classes`={num_classes} and `class_dropout_prob`={dropout} disagree about the null row "
                    f"of the {rows}-row label table (a null row exists iff class_dropout_prob > 0)."
                )
            has_null = dropout > 0
        has_null = True if has_null is None else has_null
        if rows - has_null < 1:
            raise ValueError(f"The label table has {rows} rows: too few for classes plus a null row.")
        if dropout is None:
            dropout = 0.1 if has_null else 0.0  # 0.1: the official training value
        config.update(num_classes=rows - int(has_null), class_dropout_prob=dropout)

    num_heads = overrides.get("num_heads", OFFICIAL_NUM_HEADS.get(int(hidden)))
    if num_heads is None:
        raise ValueError(
            f"The number of heads is not in a state dict and hidden_size {hidden} is not an official width "
            f"({sorted(OFFICIAL_NUM_HEADS)}): pass `num_heads=`."
        )
    config["num_heads"] = num_heads
    return config


def import_official_checkpoint(source, input_channels=None, **overrides):
    """A `SiT` holding the weights of an official PyTorch SiT checkpoint.

    Args:
        source: path to a `.pt` file (a bare state dict, as released, or a
            `train.py` checkpoint, whose `"ema"` weights are taken, else
            `"model"`), or such a dict of torch tensors or NumPy arrays.
        input_channels: if given, checked against the checkpoint.
        **overrides: `SiT` arguments. The architecture comes from the
            shapes; give what they cannot tell: `num_heads` (defaults to the
            official heads for widths 384/768/1024/1152), `num_classes` (the
            default assumes the official null row: rows - 1 classes),
            `class_dropout_prob`, `input_shape` for a non-square grid.
            `learn_sigma=False` drops the unused sigma outputs. Others (path,
            seed, ...) are passed on.

    The returned model has `time_convention="official"` (see the module
    docstring), so its `velocity`/`generate` work in keras_sit's time.
    """
    overrides = resolve_depth_alias(dict(overrides), None)
    if overrides.get("time_embedding_scale", 1) != 1:
        raise ValueError(
            "`time_embedding_scale` must be 1: the official network embeds raw t; "
            f"got {overrides['time_embedding_scale']!r}."
        )
    if overrides.get("input_dim") is not None:
        raise ValueError("`input_dim` is not possible: official checkpoints are image models.")
    state = _load(source)
    config = _infer_config(state, input_channels, overrides)
    channels = config["input_shape"][2]
    if "final_layer.linear.weight" in state and not config["learn_sigma"]:
        rows = state["final_layer.linear.weight"].shape[0]
        if rows == 2 * config["patch_size"] ** 2 * channels:  # keep channel < C of each interleaved pixel
            keep = np.arange(rows) % (2 * channels) < channels
            for suffix in ("weight", "bias"):
                state[f"final_layer.linear.{suffix}"] = state[f"final_layer.linear.{suffix}"][keep]

    sit = SiT(**{**overrides, **config, "time_embedding_scale": 1, "time_convention": "official"})
    expected = sit_variables(sit.backbone)
    missing = sorted({key for key, _, _ in expected} - set(state))
    unexpected = sorted(set(state) - {key for key, _, _ in expected})
    if missing or unexpected:
        raise ValueError(
            f"`source` does not fit the inferred SiT: missing keys {missing}, unexpected keys {unexpected}."
        )
    p = config["patch_size"]
    for key, variable, kind in expected:
        value = from_torch_layout(state[key], kind, p, channels)
        if tuple(value.shape) != tuple(variable.shape):
            raise ValueError(f"`source[{key!r}]` has shape {state[key].shape}, which does not fit the inferred SiT.")
        variable.assign(value)
    return sit
