"""KL autoencoder checkpoints (diffusers and original LDM layouts) in and out.

`import_autoencoder` reads the two layouts users download:

* diffusers: a folder (or a file in it) with `diffusion_pytorch_model.safetensors`
  or `.bin` and a `config.json`, keys like
  `encoder.down_blocks.0.resnets.0.norm1.weight` and
  `encoder.mid_block.attentions.0.to_q.weight` (older files name the
  attention `query/key/value/proj_attn`; both are read);
* original LDM / CompVis (`vae-ft-ema-560000-ema-pruned.safetensors` or
  `.ckpt`, or a full SD checkpoint whose autoencoder keys start with
  `first_stage_model.`): `encoder.down.0.block.0.norm1.weight`,
  `encoder.mid.attn_1.q.weight` (1x1 convs), `nin_shortcut`, `norm_out`,
  and `decoder.up.{i}`, where LDM's level `i` is diffusers' up block
  `levels - 1 - i` (LDM counts decoder levels from the highest resolution).

The layout is told apart by the keys. The architecture comes from the
shapes (levels, channels, resnets per level, latent channels, which convs
exist); `config.json`, a name from `AUTOENCODER_CONFIGS` or a dict supplies
what shapes cannot tell: `norm_num_groups`, `scaling_factor`, `shift_factor`.
An LDM file carries none of those, so it gets the SD-1/2 values unless told
otherwise (`config="sdxl"`, `"sd3"`, `"flux"`).

Conv weights `(O, I, kh, kw)` become Keras kernels `(kh, kw, I, O)`; the
attention projections, Linear `(O, I)` in diffusers and 1x1 convs
`(O, I, 1, 1)` in LDM, become Dense kernels `(I, O)`. Safetensors are read
without torch; pickles with `torch.load(weights_only=True)`, so loading runs
no pickled code (`keras_sit.convert.checkpoints`).
"""

import os

import numpy as np
from keras import ops

from keras_sit.autoencoders import AUTOENCODER_CONFIGS, AutoencoderKL
from keras_sit.convert.checkpoints import (
    check_state_dict,
    float32_arrays,
    read_checkpoint,
    read_config_json,
    weights_file,
)
from keras_sit.validation import check_choice, keyword_defaults

FORMATS = ("diffusers", "ldm")
DIFFUSERS_WEIGHTS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
# Prefixes of the autoencoder inside a full latent-diffusion checkpoint (as diffusers' single-file loader).
LDM_PREFIXES = ("first_stage_model.", "vae.")
# Training-only modules of an LDM autoencoder checkpoint (its LPIPS and discriminator loss); never weights of the model.
LDM_IGNORED_PREFIXES = ("loss.",)
_OLD_ATTENTION_NAMES = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}
# Arguments the shapes decide; a config or override that disagrees is an error.
_ARCHITECTURE = (
    "in_channels",
    "out_channels",
    "block_out_channels",
    "layers_per_block",
    "latent_channels",
    "use_quant_conv",
    "use_post_quant_conv",
    "mid_block_add_attention",
)
_SETTINGS = keyword_defaults(AutoencoderKL.__init__, exclude=("seed", "dtype"))
# diffusers config.json entries with no bearing on the weights or on the latent scaling.
_DIFFUSERS_METADATA = ("sample_size", "force_upcast")


def _parameters(model):
    """`(diffusers key, LDM key, variable, kind)` for every weight, in diffusers' state-dict order.

    `kind` says how the PyTorch array maps onto the variable: "conv"
    (transpose to `(kh, kw, I, O)`), "dense" (squeeze 1x1, transpose) or
    "plain" (biases and norm scales, as is).
    """
    rows = []

    def conv(diffusers, ldm, layer):
        rows.append((f"{diffusers}.weight", f"{ldm}.weight", layer.kernel, "conv"))
        rows.append((f"{diffusers}.bias", f"{ldm}.bias", layer.bias, "plain"))

    def dense(diffusers, ldm, layer):
        rows.append((f"{diffusers}.weight", f"{ldm}.weight", layer.kernel, "dense"))
        rows.append((f"{diffusers}.bias", f"{ldm}.bias", layer.bias, "plain"))

    def norm(diffusers, ldm, layer):
        rows.append((f"{diffusers}.weight", f"{ldm}.weight", layer.gamma, "plain"))
        rows.append((f"{diffusers}.bias", f"{ldm}.bias", layer.beta, "plain"))

    def resnet(diffusers, ldm, block):
        norm(f"{diffusers}.norm1", f"{ldm}.norm1", block.norm1)
        conv(f"{diffusers}.conv1", f"{ldm}.conv1", block.conv1)
        norm(f"{diffusers}.norm2", f"{ldm}.norm2", block.norm2)
        conv(f"{diffusers}.conv2", f"{ldm}.conv2", block.conv2)
        if block.conv_shortcut is not None:
            conv(f"{diffusers}.conv_shortcut", f"{ldm}.nin_shortcut", block.conv_shortcut)

    def mid_block(side, block):
        if block.attention is not None:
            diffusers, ldm, attention = f"{side}.mid_block.attentions.0", f"{side}.mid.attn_1", block.attention
            norm(f"{diffusers}.group_norm", f"{ldm}.norm", attention.group_norm)
            dense(f"{diffusers}.to_q", f"{ldm}.q", attention.to_q)
            dense(f"{diffusers}.to_k", f"{ldm}.k", attention.to_k)
            dense(f"{diffusers}.to_v", f"{ldm}.v", attention.to_v)
            dense(f"{diffusers}.to_out.0", f"{ldm}.proj_out", attention.to_out)
        for j, block_j in enumerate(block.resnets):
            resnet(f"{side}.mid_block.resnets.{j}", f"{side}.mid.block_{j + 1}", block_j)

    def ends(side, part, blocks):  # conv_in, the levels, the mid block, then norm and conv_out
        conv(f"{side}.conv_in", f"{side}.conv_in", part.conv_in)
        blocks()
        mid_block(side, part.mid_block)
        norm(f"{side}.conv_norm_out", f"{side}.norm_out", part.conv_norm_out)
        conv(f"{side}.conv_out", f"{side}.conv_out", part.conv_out)

    def down_blocks():
        for i, block in enumerate(model.encoder.down_blocks):
            for j, block_j in enumerate(block.resnets):
                resnet(f"encoder.down_blocks.{i}.resnets.{j}", f"encoder.down.{i}.block.{j}", block_j)
            if block.downsample is not None:
                diffusers, ldm = f"encoder.down_blocks.{i}.downsamplers.0.conv", f"encoder.down.{i}.downsample.conv"
                conv(diffusers, ldm, block.downsample.conv)

    def up_blocks():
        levels = len(model.decoder.up_blocks)
        for i, block in enumerate(model.decoder.up_blocks):
            ldm = f"decoder.up.{levels - 1 - i}"  # LDM numbers the decoder's levels from the highest resolution
            for j, block_j in enumerate(block.resnets):
                resnet(f"decoder.up_blocks.{i}.resnets.{j}", f"{ldm}.block.{j}", block_j)
            if block.upsample is not None:
                conv(f"decoder.up_blocks.{i}.upsamplers.0.conv", f"{ldm}.upsample.conv", block.upsample.conv)

    ends("encoder", model.encoder, down_blocks)
    ends("decoder", model.decoder, up_blocks)
    if model.quant_conv is not None:
        conv("quant_conv", "quant_conv", model.quant_conv)
    if model.post_quant_conv is not None:
        conv("post_quant_conv", "post_quant_conv", model.post_quant_conv)
    return rows


def export_autoencoder_state_dict(model, format="diffusers"):
    """The state dict (`{key: float32 array}`) of an `AutoencoderKL` in the diffusers or the LDM layout.

    `"diffusers"` gives the keys, shapes and order of diffusers'
    `AutoencoderKL.state_dict()`; `"ldm"` the original CompVis names, with
    the attention projections as 1x1 convs.
    """
    if not isinstance(model, AutoencoderKL):
        raise TypeError(f"`model` must be a keras_sit AutoencoderKL; got {type(model).__name__}.")
    check_choice("format", format, FORMATS)
    state = {}
    for diffusers_key, ldm_key, variable, kind in _parameters(model):
        value = np.asarray(ops.convert_to_numpy(variable), dtype=np.float32)
        if kind == "conv":
            value = value.transpose(3, 2, 0, 1)
        elif kind == "dense":
            value = value.T if format == "diffusers" else value.T[:, :, None, None]
        state[diffusers_key if format == "diffusers" else ldm_key] = np.ascontiguousarray(value)
    return state


# --- reading ---


def _read(path_or_state):
    """`(state dict of float32 arrays, config.json as a dict or None)`.

    A file that holds no dict, a damaged `config.json` and entries that are
    no finite floating-point weights raise, naming the file or the key.
    LDM training-loss entries (`loss.*`: its LPIPS and discriminator, with
    integer batch-norm counters) are dropped before the weights are checked.
    """
    if isinstance(path_or_state, dict):
        state, config_json = path_or_state, None
    elif isinstance(path_or_state, (str, os.PathLike)):
        path = os.fspath(path_or_state)
        folder = path if os.path.isdir(path) else os.path.dirname(path)
        path = weights_file(path, DIFFUSERS_WEIGHTS)
        state = read_checkpoint(path)
        if not isinstance(state, dict):
            raise ValueError(
                f"`path_or_state` {path!r} holds a {type(state).__name__}, not a state dict of an autoencoder."
            )
        config_json = read_config_json(os.path.join(folder, "config.json"))
    else:
        raise TypeError(
            f"`path_or_state` must be a path (a diffusers folder or a checkpoint file) or a state dict; "
            f"got {type(path_or_state).__name__}."
        )
    if isinstance(state.get("state_dict"), dict):  # a PyTorch Lightning (.ckpt) checkpoint
        state = state["state_dict"]
    check_state_dict(state, "path_or_state")
    for prefix in LDM_PREFIXES:  # the autoencoder inside a full latent-diffusion checkpoint
        if any(key.startswith(prefix) for key in state):
            state = {key[len(prefix) :]: value for key, value in state.items() if key.startswith(prefix)}
            break
    state = {key: value for key, value in state.items() if not key.startswith(LDM_IGNORED_PREFIXES)}
    return float32_arrays(state, "path_or_state"), config_json


def _detect_format(state):
    if any(key.startswith(("encoder.down_blocks.", "encoder.mid_block.", "decoder.up_blocks.")) for key in state):
        return "diffusers"
    if any(key.startswith(("encoder.down.", "encoder.mid.", "decoder.up.")) for key in state):
        return "ldm"
    raise ValueError(
        "`path_or_state` is not a KL autoencoder checkpoint: it has neither diffusers keys (encoder.down_blocks.*) "
        f"nor LDM keys (encoder.down.*). Its first keys: {sorted(state)[:5]}."
    )


def _normalize(state, format):
    """Old diffusers attention names to the current ones (LDM's names stay; `_read` dropped its loss entries)."""
    if format == "ldm":
        return state
    renamed = {}
    for key, value in state.items():
        head, _, tail = key.rpartition(".")  # tail: weight or bias
        module_path, _, name = head.rpartition(".")
        if ".attentions." in module_path and name in _OLD_ATTENTION_NAMES:
            key = f"{module_path}.{_OLD_ATTENTION_NAMES[name]}.{tail}"
        renamed[key] = value
    return renamed


def _shape(state, key):
    """The shape of the conv weight `state[key]`, checked to be `(out, in, h, w)`."""
    if key not in state:
        raise ValueError(f"The checkpoint has no key {key!r}, which the architecture is read from.")
    if state[key].ndim != 4:
        raise ValueError(
            f"`path_or_state[{key!r}]` must be a conv weight (out, in, h, w); got shape {tuple(state[key].shape)}."
        )
    return state[key].shape


def _indices(state, prefix):
    """The integers `k` of the keys `prefix + "k." ...`, checked to be 0, 1, ..., n - 1."""
    found = {
        int(head) for key in state if key.startswith(prefix) and (head := key[len(prefix) :].split(".")[0]).isdigit()
    }
    if found != set(range(len(found))) or not found:
        raise ValueError(f"The checkpoint's keys `{prefix}<i>.*` must number i = 0, 1, ...; got {sorted(found)}.")
    return sorted(found)


def _infer_architecture(state, format):
    """The `AutoencoderKL` arguments that the keys and shapes of `state` decide."""
    if format == "diffusers":
        down, resnets, attention = "encoder.down_blocks.", "resnets.", "encoder.mid_block.attentions.0.to_q.weight"
    else:
        down, resnets, attention = "encoder.down.", "block.", "encoder.mid.attn_1.q.weight"
    levels = _indices(state, down)
    layers = _indices(state, f"{down}0.{resnets}")
    encoder_out = _shape(state, "encoder.conv_out.weight")[0]
    if encoder_out % 2:
        raise ValueError(f"`encoder.conv_out.weight` has {encoder_out} output channels: not mean plus log-variance.")
    return {
        "in_channels": int(_shape(state, "encoder.conv_in.weight")[1]),
        "out_channels": int(_shape(state, "decoder.conv_out.weight")[0]),
        "block_out_channels": tuple(int(_shape(state, f"{down}{i}.{resnets}0.conv1.weight")[0]) for i in levels),
        "layers_per_block": len(layers),
        "latent_channels": int(encoder_out // 2),
        "use_quant_conv": "quant_conv.weight" in state,
        "use_post_quant_conv": "post_quant_conv.weight" in state,
        "mid_block_add_attention": attention in state,
    }


def _from_diffusers_config(config, source):
    """`AutoencoderKL` arguments from a diffusers-style config dict (config.json or `config=`)."""
    if config.get("_class_name", "AutoencoderKL") != "AutoencoderKL":
        raise ValueError(f"{source} describes a {config['_class_name']}, not an AutoencoderKL.")
    if config.get("act_fn", "silu") != "silu":
        raise ValueError(f"{source} has act_fn={config['act_fn']!r}; only 'silu' is supported.")
    for name, block in (("down_block_types", "DownEncoderBlock2D"), ("up_block_types", "UpDecoderBlock2D")):
        if any(kind != block for kind in config.get(name, ())):
            raise ValueError(f"{source} has {name}={config[name]!r}; only {block!r} blocks are supported.")
    for name in ("latents_mean", "latents_std"):
        if config.get(name) is not None:
            raise ValueError(
                f"{source} has per-channel {name}; AutoencoderKL scales latents by scaling_factor and "
                "shift_factor only."
            )
    known = set(_SETTINGS) | set(_DIFFUSERS_METADATA) | {"act_fn", "down_block_types", "up_block_types"}
    known |= {"latents_mean", "latents_std"}
    unknown = sorted(key for key in set(config) - known if not key.startswith("_"))  # "_...": diffusers' metadata
    if unknown:
        raise ValueError(f"{source} has settings AutoencoderKL does not know: {unknown}.")
    arguments = {name: config[name] for name in _SETTINGS if name in config}
    if arguments.get("shift_factor", 0.0) is None:  # diffusers' "no shift"
        arguments["shift_factor"] = 0.0
    if "block_out_channels" in arguments:
        arguments["block_out_channels"] = tuple(arguments["block_out_channels"])
    return arguments


def _resolve_config(config, config_json, inferred, overrides):
    """The `AutoencoderKL` arguments: declared settings, overrides, then the checked architecture."""
    if config is not None:
        if isinstance(config, str):
            check_choice("config", config, tuple(AUTOENCODER_CONFIGS))
            declared, source = dict(AUTOENCODER_CONFIGS[config]), f"config={config!r}"
        elif isinstance(config, dict):
            declared, source = _from_diffusers_config(config, "`config`"), "`config`"
        else:
            raise TypeError(f"`config` must be a name in {tuple(AUTOENCODER_CONFIGS)} or a dict; got {config!r}.")
    elif config_json is not None:
        declared, source = _from_diffusers_config(config_json, "config.json"), "config.json"
    else:  # no config at all: SD-1/2's settings, the architecture from the shapes
        default = AUTOENCODER_CONFIGS["sd"]
        if inferred["latent_channels"] != default["latent_channels"] and "scaling_factor" not in overrides:
            raise ValueError(
                f"The checkpoint has {inferred['latent_channels']} latent channels and no config.json, so its latent "
                "scaling is unknown: pass `config=` (e.g. 'sd3', 'flux', or a dict) or `scaling_factor=` and "
                "`shift_factor=`."
            )
        declared, source = {k: v for k, v in default.items() if k not in _ARCHITECTURE}, "the default config 'sd'"
    declared = {**declared, **overrides}
    if "block_out_channels" in declared:
        declared["block_out_channels"] = tuple(declared["block_out_channels"])
    for name in _ARCHITECTURE:
        if name in declared and declared[name] != inferred[name]:
            where = "an override" if name in overrides else source
            raise ValueError(
                f"`{name}`={declared[name]!r} (from {where}) contradicts the checkpoint, which has {inferred[name]!r}."
            )
    return {**declared, **inferred}


def import_autoencoder(path_or_state, config=None, **overrides):
    """An `AutoencoderKL` holding the weights of a diffusers or LDM checkpoint.

    Args:
        path_or_state: a diffusers folder (with
            `diffusion_pytorch_model.safetensors` or `.bin`, and
            `config.json`), a weights file (`.safetensors`, `.bin`, `.ckpt`,
            `.pt`, `.pth`; a `config.json` next to it is read), or a state
            dict of torch tensors or NumPy arrays.
        config: the settings the shapes cannot tell (`norm_num_groups`,
            `scaling_factor`, `shift_factor`): a key of
            `AUTOENCODER_CONFIGS` or a dict in diffusers' config.json names.
            Replaces config.json when given. Without either, SD-1/2's
            settings are used for a 4-channel checkpoint, and other latent
            widths need one.
        **overrides: `AutoencoderKL` arguments on top (`dtype`, `seed`,
            `scaling_factor`, ...). Architecture arguments are checked
            against the checkpoint.

    Raises:
        ValueError: the keys do not fit the architecture (naming the
            missing and unexpected keys), or shapes do not (naming them).
    """
    state, config_json = _read(path_or_state)
    format = _detect_format(state)
    state = _normalize(state, format)
    inferred = _infer_architecture(state, format)
    model = AutoencoderKL(**_resolve_config(config, config_json, inferred, overrides))

    rows = {row[0 if format == "diffusers" else 1]: row for row in _parameters(model)}
    missing = sorted(set(rows) - set(state))
    unexpected = sorted(set(state) - set(rows))
    if missing or unexpected:
        raise ValueError(
            f"The {format} checkpoint does not fit the AutoencoderKL its shapes describe: "
            f"missing keys {missing}, unexpected keys {unexpected}."
        )
    values, wrong = {}, []
    for key, (_, _, variable, kind) in rows.items():
        value = state[key]
        if kind == "conv" and value.ndim == 4:
            value = value.transpose(2, 3, 1, 0)
        elif kind == "dense" and (value.ndim == 2 or value.shape[2:] == (1, 1)):
            value = value.reshape(value.shape[:2]).T
        if tuple(value.shape) != tuple(variable.shape):
            wrong.append(f"{key} {tuple(state[key].shape)} (Keras variable {tuple(variable.shape)})")
        values[key] = value
    if wrong:
        raise ValueError(f"Checkpoint weights of the wrong shape for the inferred AutoencoderKL: {wrong}.")
    for key, (_, _, variable, _) in rows.items():
        variable.assign(values[key])
    return model
