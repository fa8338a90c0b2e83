"""The twelve official SiT configurations (`SiT-S/2` ... `SiT-XL/8`).

A preset fixes only the transformer's architecture (depth, width, heads,
patch size), exactly as the official `SiT_models` table does; the data shape
and the conditioning (`input_shape`, `num_classes`, `learn_sigma`, ...) are
the caller's, because they depend on the data. The official ImageNet 256 px
models use `input_shape=(32, 32, 4), num_classes=1000, learn_sigma=True`.

Presets are data: `SiT.from_preset(name, **overrides)` builds a model from
one, and `parameter_count` gives its size without building it, so that the
XL models (675M parameters) can be sized without allocating them.
"""

from keras_sit.backbone import ARCHITECTURE_DEFAULTS, validate_architecture
from keras_sit.functions import output_size
from keras_sit.validation import resolve_depth_alias

_SIZES = {"S": (12, 384, 6), "B": (12, 768, 12), "L": (24, 1024, 16), "XL": (28, 1152, 16)}

PRESETS = {
    f"SiT-{size}/{patch}": {"depth": depth, "hidden_size": hidden, "num_heads": heads, "patch_size": patch}
    for size, (depth, hidden, heads) in _SIZES.items()
    for patch in (2, 4, 8)
}

# Width -> heads of the official presets (head size 64, 72 for XL). A converter
# uses it because the number of heads is not visible in a state dict.
OFFICIAL_NUM_HEADS = {hidden: heads for _, hidden, heads in _SIZES.values()}


def preset_config(name, **overrides):
    """The preset's architecture updated with `overrides` (they win).

    `num_layers` is read as `depth`, as `SiT` does. `SiT.from_preset(name,
    **overrides)` builds the model.
    """
    if name not in PRESETS:
        raise ValueError(f"Unknown preset `name` {name!r}; valid names: {', '.join(PRESETS)}.")
    overrides = resolve_depth_alias(dict(overrides), PRESETS[name]["depth"])
    return {**PRESETS[name], **overrides}


def parameter_count(name, input_shape=None, num_classes=None, learn_sigma=False, **overrides):
    """Parameters of `SiT.from_preset(name, input_shape=..., ...)`, without building it.

    Counts every weight, the fixed position table included, as the official
    `sum(p.numel() for p in model.parameters())` and Keras' `count_params()`
    do. Takes the same overrides; those that do not change the size (seed,
    path, time_embedding_scale, ...) are ignored.
    """
    config = {**ARCHITECTURE_DEFAULTS, **preset_config(name, **overrides)}
    config.update(input_shape=input_shape, num_classes=num_classes, learn_sigma=learn_sigma)
    data_shape = validate_architecture(config)
    p, d = config["patch_size"], config["hidden_size"]
    mlp = int(d * config["mlp_ratio"])
    if len(data_shape) == 3:
        tokens, patch_values = (data_shape[0] // p) * (data_shape[1] // p), p * p * data_shape[2]
    else:
        tokens, patch_values = data_shape[0] // p, p
    out = output_size(config["input_shape"], config["input_dim"], p, learn_sigma)

    def dense(fan_in, fan_out):
        return fan_in * fan_out + fan_out

    count = tokens * d + dense(patch_values, d)  # position table, patch projection
    count += dense(256, d) + dense(d, d)  # time MLP (256 frequencies)
    if num_classes is not None:
        count += (num_classes + int(config["class_dropout_prob"] > 0)) * d
    block = dense(d, 3 * d) + dense(d, d) + dense(d, mlp) + dense(mlp, d) + dense(d, 6 * d)
    count += config["depth"] * block
    count += dense(d, out) + dense(d, 2 * d)  # final layer
    return count
