"""DINOv2 checkpoints into a `DINOv2Teacher`.

`import_dinov2` reads the files users download:

* Hugging Face `facebook/dinov2-{small,base,large,giant}` and
  `facebook/dinov2-with-registers-*`: `model.safetensors` (or
  `pytorch_model.bin`), or the folder holding it and `config.json`. Keys
  `embeddings.{cls_token, register_tokens, position_embeddings}`,
  `embeddings.patch_embeddings.projection.*`, `encoder.layer.{i}.*` with the
  attention as `attention.attention.{query,key,value}` and
  `attention.output.dense` (as released) or `attention.{q,k,v,o}_proj` (as
  transformers 5 names them in memory), the MLP as `mlp.fc1/fc2`, or for
  ViT-g `mlp.weights_in/weights_out` (or `gate_proj/up_proj/down_proj`),
  `layer_scale{1,2}.lambda1`, and `layernorm.*`.
* torch hub `dinov2_vit{s,b,l,g}14[_reg]_pretrain.pth`: `cls_token`,
  `register_tokens`, `pos_embed`, `patch_embed.proj.*`,
  `blocks.{i}.{norm1, attn.qkv, attn.proj, ls1.gamma, norm2, mlp.fc1,
  mlp.fc2 (or mlp.w12, mlp.w3), ls2.gamma}`, `norm.*`.

Both become the hub's names, then the teacher's variables: the conv weight
`(C, 3, 14, 14)` a kernel `(14, 14, 3, C)`, Linear weights `(O, I)` kernels
`(I, O)`, the separate q, k, v projections one fused `qkv`, the SwiGLU's gate
and value one `w12` (gate first). The mask token (used in DINOv2's training
only) is ignored. The architecture comes from the shapes: width, depth, MLP
kind and width, registers, patch size; the number of heads, which no shape
shows, from `num_heads`, else from `config.json`, else from DINOv2's 64-wide
heads. The position table is resampled once, as REPA does with timm's
`resample_abs_pos_embed` (antialiased bicubic, class token apart), from the
checkpoint's grid (37x37 for the releases) to the grid the resized images
give. Safetensors are read without torch; pickles with
`torch.load(weights_only=True)`, so loading runs no pickled code
(`keras_sit.convert.checkpoints`).
"""

import math
import os
import re

import numpy as np

from keras_sit.convert.checkpoints import (
    assign_torch_weights,
    float32_arrays,
    read_checkpoint,
    read_config_json,
    weights_file,
)
from keras_sit.teachers.dinov2 import HEAD_DIM, DINOv2Teacher
from keras_sit.teachers.interpolation import resample_position_embeddings
from keras_sit.validation import check_positive_int

HUGGING_FACE_WEIGHTS = ("model.safetensors", "pytorch_model.bin")
IGNORED_KEYS = ("mask_token",)  # DINOv2's masked-image-modelling token, unused at inference

_HUGGING_FACE_TOP_NAMES = {
    "embeddings.cls_token": "cls_token",
    "embeddings.mask_token": "mask_token",
    "embeddings.register_tokens": "register_tokens",
    "embeddings.position_embeddings": "pos_embed",
    "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
    "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
    "layernorm.weight": "norm.weight",
    "layernorm.bias": "norm.bias",
}
_HUGGING_FACE_BLOCK = re.compile(r"encoder\.layer\.(\d+)\.(.+)\.(weight|bias)$")
# Modules of a block (after `encoder.layer.{i}.`, before `.weight`/`.bias`) and their hub names.
_HUGGING_FACE_MODULES = {
    "norm1": "norm1",
    "norm2": "norm2",
    "attention.output.dense": "attn.proj",
    "attention.o_proj": "attn.proj",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
    "mlp.weights_in": "mlp.w12",
    "mlp.weights_out": "mlp.w3",
    "mlp.down_proj": "mlp.w3",
}
_HUGGING_FACE_LAYER_SCALES = {"layer_scale1.lambda1": "ls1.gamma", "layer_scale2.lambda1": "ls2.gamma"}
# Separate projections that the hub keeps as one, concatenated along the outputs in this order.
_HUGGING_FACE_FUSED = (
    ("attn.qkv", ("attention.attention.query", "attention.attention.key", "attention.attention.value")),
    ("attn.qkv", ("attention.q_proj", "attention.k_proj", "attention.v_proj")),
    ("mlp.w12", ("mlp.gate_proj", "mlp.up_proj")),
)
_FUSED_PART = {part: (target, parts) for target, parts in _HUGGING_FACE_FUSED for part in parts}
# config.json settings DINOv2Teacher has no argument for; other values would make a different network.
_FIXED_SETTINGS = {"hidden_act": "gelu", "layer_norm_eps": 1e-6, "qkv_bias": True, "num_channels": 3}


def _read(path_or_state):
    """`(state dict of float32 arrays, config.json as a dict or None)`."""
    if isinstance(path_or_state, dict):
        return float32_arrays(path_or_state, "path_or_state"), None
    if not isinstance(path_or_state, (str, os.PathLike)):
        raise TypeError(
            "`path_or_state` must be a path (a DINOv2 weights file or a Hugging Face folder) or a state dict; "
            f"got {type(path_or_state).__name__}."
        )
    path = os.fspath(path_or_state)
    path = weights_file(path, HUGGING_FACE_WEIGHTS)
    state = read_checkpoint(path)
    if not isinstance(state, dict):
        raise ValueError(f"`path_or_state` {path!r} holds a {type(state).__name__}, not a state dict of DINOv2.")
    config_json = read_config_json(os.path.join(os.path.dirname(path), "config.json"))
    return float32_arrays(state, "path_or_state"), config_json


def _from_hugging_face(state):
    """The hub's keys and layout for a state dict in transformers' names."""
    hub, parts_found, unknown = {}, {}, []
    for key, value in state.items():
        block = _HUGGING_FACE_BLOCK.match(key)
        layer_scale = re.fullmatch(r"encoder\.layer\.(\d+)\.(layer_scale[12]\.lambda1)", key)
        if key in _HUGGING_FACE_TOP_NAMES:
            hub[_HUGGING_FACE_TOP_NAMES[key]] = value
        elif layer_scale is not None:
            hub[f"blocks.{layer_scale.group(1)}.{_HUGGING_FACE_LAYER_SCALES[layer_scale.group(2)]}"] = value
        elif block is not None and block.group(2) in _HUGGING_FACE_MODULES:
            index, module, kind = block.groups()
            hub[f"blocks.{index}.{_HUGGING_FACE_MODULES[module]}.{kind}"] = value
        elif block is not None and block.group(2) in _FUSED_PART:
            parts_found[block.groups()] = value
        else:
            unknown.append(key)
    if unknown:
        raise ValueError(f"`path_or_state` has keys a DINOv2 model in transformers' names does not: {sorted(unknown)}.")
    groups = {(index, _FUSED_PART[module], kind) for index, module, kind in parts_found}
    for index, (target, parts), kind in sorted(groups):
        missing = [f"encoder.layer.{index}.{part}.{kind}" for part in parts if (index, part, kind) not in parts_found]
        if missing:
            raise ValueError(f"`path_or_state` lacks {missing}, the other parts of a fused projection.")
        values = [parts_found[(index, part, kind)] for part in parts]
        if len({value.shape[1:] for value in values}) != 1 or min(value.ndim for value in values) == 0:
            shapes = {f"encoder.layer.{index}.{part}.{kind}": tuple(v.shape) for part, v in zip(parts, values)}
            raise ValueError(f"`path_or_state` has parts of a fused projection whose shapes do not stack: {shapes}.")
        hub[f"blocks.{index}.{target}.{kind}"] = np.concatenate(values, axis=0)
    return hub


def _block_count(state):
    indices = {int(match.group(1)) for key in state if (match := re.match(r"blocks\.(\d+)\.", key))}
    if not indices or indices != set(range(len(indices))):
        raise ValueError(
            f"`path_or_state` must have blocks numbered 0, 1, ..., n - 1 (`blocks.<i>.*`); got {sorted(indices)}."
        )
    return len(indices)


def _shape(state, key, ndim):
    """The shape of `state[key]`, checked to have `ndim` dimensions."""
    if key not in state:
        raise ValueError(f"`path_or_state` has no {key!r}, which the DINOv2 architecture is read from.")
    if state[key].ndim != ndim:
        raise ValueError(f"`path_or_state[{key!r}]` must have {ndim} dimensions; got shape {tuple(state[key].shape)}.")
    return state[key].shape


def _architecture(state):
    """The `DINOv2Teacher` arguments the shapes of a hub-named state dict decide."""
    hidden, channels, patch, patch_width = _shape(state, "patch_embed.proj.weight", 4)
    if channels != 3 or patch != patch_width:
        raise ValueError(
            f"`path_or_state`'s `patch_embed.proj.weight` has shape {(hidden, channels, patch, patch_width)}: "
            "not square patches of RGB images."
        )
    swiglu = "blocks.0.mlp.w12.weight" in state
    mlp_rows = _shape(state, "blocks.0.mlp.w12.weight" if swiglu else "blocks.0.mlp.fc1.weight", 2)[0]
    registers = _shape(state, "register_tokens", 3)[1] if "register_tokens" in state else 0
    return {
        "patch_size": int(patch),
        "hidden_size": int(hidden),
        "depth": _block_count(state),
        "mlp_hidden_size": int(mlp_rows // 2 if swiglu else mlp_rows),
        "mlp_type": "swiglu" if swiglu else "gelu",
        "num_register_tokens": int(registers),
    }


def _resolve_heads(num_heads, config_json, hidden_size):
    """The number of attention heads: `num_heads`, else config.json's, else DINOv2's 64-wide heads."""
    from_config = None if config_json is None else config_json.get("num_attention_heads")
    if num_heads is not None:
        check_positive_int("num_heads", num_heads)
        if from_config is not None and from_config != num_heads:
            raise ValueError(f"`num_heads`={num_heads} contradicts config.json's num_attention_heads={from_config}.")
        return num_heads
    if from_config is not None:
        return int(from_config)
    if hidden_size % HEAD_DIM:
        raise ValueError(
            f"The checkpoint's width {hidden_size} is not a multiple of DINOv2's {HEAD_DIM}-wide heads, and no "
            "config.json gives the number of heads: pass `num_heads`."
        )
    return hidden_size // HEAD_DIM


def _check_config_json(config_json, architecture):
    """config.json's settings agree with the weights and with what `DINOv2Teacher` computes."""
    if config_json is None:
        return
    for name, expected in _FIXED_SETTINGS.items():
        if name in config_json and config_json[name] != expected:
            raise ValueError(f"config.json has {name}={config_json[name]!r}; DINOv2Teacher computes {expected!r}.")
    implied = {
        "hidden_size": architecture["hidden_size"],
        "num_hidden_layers": architecture["depth"],
        "patch_size": architecture["patch_size"],
        "use_swiglu_ffn": architecture["mlp_type"] == "swiglu",
        "num_register_tokens": architecture["num_register_tokens"],
    }
    for name, value in implied.items():
        if name in config_json and config_json[name] != value:
            raise ValueError(f"config.json has {name}={config_json[name]!r}, but the weights give {value!r}.")


def _parameters(model):
    """`[(hub key, Keras variable, kind)]` for every weight.

    `kind` says how the PyTorch array becomes the variable: "conv" (to
    `(kh, kw, I, O)`), "dense" (transposed), "position" (resampled to the
    teacher's grid) or "plain" (as is).
    """
    embeddings = model.embeddings
    rows = [
        ("cls_token", embeddings.cls_token, "plain"),
        ("pos_embed", embeddings.position_embeddings, "position"),
        ("patch_embed.proj.weight", embeddings.proj.kernel, "conv"),
        ("patch_embed.proj.bias", embeddings.proj.bias, "plain"),
    ]
    if embeddings.register_tokens is not None:
        rows.append(("register_tokens", embeddings.register_tokens, "plain"))

    def pair(prefix, weight, bias, kind):
        rows.append((f"{prefix}.weight", weight, kind))
        rows.append((f"{prefix}.bias", bias, "plain"))

    for index, block in enumerate(model.blocks):
        prefix = f"blocks.{index}"
        pair(f"{prefix}.norm1", block.norm1.gamma, block.norm1.beta, "plain")
        pair(f"{prefix}.attn.qkv", block.attn.qkv.kernel, block.attn.qkv.bias, "dense")
        pair(f"{prefix}.attn.proj", block.attn.proj.kernel, block.attn.proj.bias, "dense")
        rows.append((f"{prefix}.ls1.gamma", block.ls1.gamma, "plain"))
        pair(f"{prefix}.norm2", block.norm2.gamma, block.norm2.beta, "plain")
        for name in ("fc1", "fc2") if block.mlp_type == "gelu" else ("w12", "w3"):
            dense = getattr(block.mlp, name)
            pair(f"{prefix}.mlp.{name}", dense.kernel, dense.bias, "dense")
        rows.append((f"{prefix}.ls2.gamma", block.ls2.gamma, "plain"))
    pair("norm", model.norm.gamma, model.norm.beta, "plain")
    return rows


def import_dinov2(path_or_state, image_size=256, resized_size=None, num_heads=None, dtype=None):
    """A frozen `DINOv2Teacher` holding the weights of a DINOv2 checkpoint.

    Args:
        path_or_state: a Hugging Face `model.safetensors` or
            `pytorch_model.bin` (`facebook/dinov2-base`, ...), the folder
            holding it, a torch hub `dinov2_vitb14_pretrain.pth` (or any
            DINOv2 variant), or a state dict of torch tensors or NumPy
            arrays in either naming.
        image_size: the side `S` of the images the teacher is given.
        resized_size: the side they are resized to before DINOv2; REPA's
            `224 * (S // 256)` by default.
        num_heads: the number of attention heads, which no weight's shape
            shows; by default config.json's (next to the file), else
            `width // 64` as in every released DINOv2.
        dtype: the teacher's dtype policy.

    Returns:
        A `DINOv2Teacher` (`trainable=False`); its position table is the
        checkpoint's, resampled to the `resized_size // patch_size` grid as
        REPA does.

    Raises:
        ValueError: the file is no DINOv2 checkpoint, has keys DINOv2 does
            not, lacks some, or has weights of the wrong shape (each named).
    """
    state, config_json = _read(path_or_state)
    if "embeddings.patch_embeddings.projection.weight" in state:
        state = _from_hugging_face(state)
    elif "patch_embed.proj.weight" not in state:
        raise ValueError(
            "`path_or_state` is not a DINOv2 checkpoint: it has neither transformers' keys "
            "(embeddings.patch_embeddings.projection.weight) nor torch hub's (patch_embed.proj.weight). "
            f"Its first keys: {sorted(state)[:5]}."
        )
    state = {key: value for key, value in state.items() if key not in IGNORED_KEYS}
    architecture = _architecture(state)
    _check_config_json(config_json, architecture)
    heads = _resolve_heads(num_heads, config_json, architecture["hidden_size"])
    model = DINOv2Teacher(
        image_size=image_size, resized_size=resized_size, num_heads=heads, dtype=dtype, **architecture
    )

    rows = {key: (variable, kind) for key, variable, kind in _parameters(model)}
    missing = sorted(set(rows) - set(state))
    unexpected = sorted(set(state) - set(rows))
    if missing or unexpected:
        raise ValueError(
            f"`path_or_state` does not fit the DINOv2 its shapes describe ({architecture}): "
            f"missing keys {missing}, unexpected keys {unexpected}."
        )

    def resample(kind, value):
        if kind == "position" and value.ndim == 3 and value.shape[0] == 1:
            return _position_table(value, model.grid_size)
        return value

    assign_torch_weights(rows, state, "inferred DINOv2", convert=resample)
    return model


def _position_table(table, grid_size):
    """The checkpoint's `[1, 1 + M*M, C]` table resampled to `grid_size`, or unchanged when it is no square grid."""
    side = math.isqrt(table.shape[1] - 1)
    if side * side != table.shape[1] - 1:
        return table  # reported as a wrong shape
    return resample_position_embeddings(table, grid_size)
