"""REPA's SiT checkpoints in and out (Yu et al., ICLR 2025; github sihyun-yu/REPA).

REPA's `models/sit.py` is the official SiT network with three changes: its
time runs as keras_sit's (t = 0 is data, t = 1 is noise; the network embeds
raw `t` and predicts the velocity `d x_t / dt`), its final layer has no sigma
outputs, and it carries projectors (one MLP per teacher: Linear -> SiLU ->
Linear -> SiLU -> Linear) on the tokens after block `encoder_depth`. Its
`--qk-norm` models use timm's attention with LayerNorms on each head's
queries and keys. The keys are the official ones (`keras_sit.convert.sit`)
plus `projectors.{k}.{0,2,4}` and `blocks.{i}.attn.{q,k}_norm`.

`import_repa_checkpoint` therefore loads a REPA file as a plain keras_sit
`SiT` (`time_convention="keras_sit"`, `time_embedding_scale=1`, no flip of
time or sign) whose projectors become the weights of a
`RepresentationAlignment` objective, so that training can go on with
alignment; `export_repa_state_dict` writes a `SiT` back in REPA's layout;
`repa_sampling_options` turns the flags of REPA's `generate.py` into
`generate` arguments that sample as it does.
Files are read without running pickled code (`read_checkpoint`): a
`train.py` checkpoint's `args` (an `argparse.Namespace`) is rebuilt by
torch's weights-only unpickler as plain data.
"""

import argparse
import math
import os

import numpy as np
from keras import ops

from keras_sit.convert.checkpoints import assign_torch_weights, float32_arrays, read_checkpoint
from keras_sit.convert.sit import from_torch_layout, sit_variables, strip_data_parallel_prefix, to_torch_layout
from keras_sit.model import SiT
from keras_sit.objectives import RepresentationAlignment
from keras_sit.presets import OFFICIAL_NUM_HEADS
from keras_sit.validation import check_choice, check_positive_int

WEIGHTS = ("ema", "model")
# REPA's `train.py` flags that describe the model or its training, and the `SiT` arguments they set.
PATH_TYPES = {"linear": "linear", "cosine": "cosine"}
PROJECTOR_LAYERS = (0, 2, 4)  # the Linear layers of REPA's `build_mlp` Sequential
DEFAULT_PROJ_COEFF = 0.5  # REPA's `--proj-coeff` default
LABEL_DROPOUT = 0.1  # REPA's SiT drops labels with its default `class_dropout_prob`, whatever the flags


def import_repa_checkpoint(source, weights="ema", encoder_depth=None, num_heads=None, feature_keys=None, **overrides):
    """A `SiT` holding the weights of a REPA checkpoint, in keras_sit's time.

    Args:
        source: path to a `.pt` file, or the loaded dict: a bare state dict
            (the released `last.pt`, EMA weights), or a `train.py`
            checkpoint `{"model", "ema", "opt", "args", "steps"}`. The
            legacy layout (`decoder_blocks.{i}` for `blocks.{encoder_depth +
            i}`) and DistributedDataParallel's `module.` prefix are read too.
        weights: `"ema"` (default, what REPA samples with) or `"model"`:
            which weights of a `train.py` checkpoint to load.
        encoder_depth: the block whose tokens the projectors read (REPA's
            `--encoder-depth`: 8 for its SiT-XL/2 and SiT-L/2, 4 for SiT-B).
            Read from a `train.py` checkpoint's `args` or a legacy layout;
            a bare state dict with projectors needs it.
        num_heads: the attention heads. Read from the shapes of a `qk_norm`
            model; otherwise REPA's (and the official) heads for widths
            384/768/1024/1152.
        feature_keys: the batch keys of the teachers' tokens, one per
            projector, for training on; default `"features"` for one
            teacher, else the names in `args.enc_type` (e.g.
            `"dinov2_vit_b"`), else `"features_0"`, `"features_1"`, ...
        **overrides: further `SiT` arguments (`seed`, `path`, ...). Those the
            file fixes (`patch_size`, `hidden_size`, `depth`, `mlp_ratio`,
            `qk_norm`, `num_classes`, `input_shape`) may be given only if
            they agree with it.

    The model gets the training settings of REPA's `train.py` where
    keras_sit has them (`overrides` win): the path (`--path-type`),
    `time_sampler="logit_normal"` for `--weighting lognormal` on the linear
    path (REPA's `sigma / (1 + sigma)` with `log sigma ~ N(0, 1)` is
    `sigmoid(N(0, 1))`), the label dropout (0.1 in REPA's SiT; with
    `--legacy`, `train.py` drops labels a second time with `--cfg-prob`) and
    the alignment weight (`--proj-coeff`).
    """
    check_choice("weights", weights, WEIGHTS)
    state, arguments = _read(source, weights)
    fixed = _architecture(state, arguments, encoder_depth, num_heads, overrides)
    alignment = _alignment(state, arguments, fixed.pop("encoder_depth"), feature_keys)
    objectives = [] if alignment is None else [RepresentationAlignment(**alignment)]
    sit = SiT(**{**_training(arguments), **overrides, **fixed}, objectives=objectives)
    _assign(sit, state)
    return sit


def export_repa_state_dict(sit):
    """REPA's state dict (`{key: float32 array}`) of a `SiT`, which REPA's `SiT` loads with `strict=True`.

    Build REPA's model with the same size, `input_size` the latent side,
    `qk_norm`, `encoder_depth` the alignment objective's `depth` and `z_dims`
    its `feature_dims` (`z_dims=[]` and any `encoder_depth` for a model
    without one), then `load_state_dict({k: torch.from_numpy(v)})`.
    REPA's network has no sigma outputs and a label table with the null
    row: a `learn_sigma` model's sigma outputs (which are never used) are
    left out, and a model without a null row gets a zero one. REPA cannot
    hold vector models, non-square grids, unconditional models, iREPA's
    convolution projectors, or networks that see another time
    (`time_embedding_scale` other than 1, `time_convention="official"`) or
    predict other than the velocity; those are refused.
    """
    if not isinstance(sit, SiT):
        raise TypeError(f"`sit` must be a keras_sit SiT; got {type(sit).__name__}.")
    backbone = sit.backbone
    if len(backbone.data_shape) != 3 or backbone.data_shape[0] != backbone.data_shape[1]:
        raise ValueError(f"REPA's SiT takes square images; `sit` takes data of shape {backbone.data_shape}.")
    if backbone.label_embedding is None:
        raise ValueError("REPA's SiT is class-conditional; `sit` is unconditional (num_classes=None).")
    if backbone.time_embedding_scale != 1 or sit.time_convention != "keras_sit" or sit.prediction != "velocity":
        raise ValueError(
            "REPA's SiT embeds raw t in keras_sit's time and predicts the velocity: `sit` needs "
            "time_embedding_scale=1, time_convention='keras_sit' and prediction='velocity'; it has "
            f"{backbone.time_embedding_scale!r}, {sit.time_convention!r} and {sit.prediction!r}."
        )
    p, channels = backbone.patch_size, backbone.data_shape[2]
    state = {
        key: to_torch_layout(ops.convert_to_numpy(variable), kind, p, channels)
        for key, (variable, kind) in _rows(sit).items()
    }
    if backbone.learn_sigma:  # keep channel < C of each interleaved pixel: the outputs the network uses
        keep = np.arange(2 * p * p * channels) % (2 * channels) < channels
        state["final_layer.linear.weight"] = state["final_layer.linear.weight"][keep]
        state["final_layer.linear.bias"] = state["final_layer.linear.bias"][keep]
    table = "y_embedder.embedding_table.weight"
    if backbone.null_class is None:
        state[table] = np.concatenate([state[table], np.zeros((1, state[table].shape[1]), np.float32)])
    return state


def repa_sampling_options(mode="ode", num_steps=50, heun=False, cfg_scale=1.5, guidance_low=0.0, guidance_high=1.0):
    """`generate` arguments that sample as REPA's `generate.py` does with these flags (its defaults).

    - `--mode ode`: Euler on `num_steps` uniform steps from t = 1 to 0; with
      `--heun`, Heun with a plain Euler last step (`"heun-euler-last"`,
      `2 num_steps - 1` model calls).
    - `--mode sde`: Euler-Maruyama from t = 1 to 0.04 in `num_steps - 1`
      steps with diffusion `w(t) = t` (REPA's `compute_diffusion` is `2 t`
      in its `g^2` form), then a noiseless mean step to 0.
    - `--cfg-scale` > 1 guides every latent channel where `guidance_low <=
      t <= guidance_high` (the step's start time), with the model's null
      class (REPA's code hard-codes 1000, ImageNet's).
    """
    check_choice("mode", mode, ("ode", "sde"))
    check_positive_int("num_steps", num_steps)
    if mode == "sde":
        if num_steps < 2:
            raise ValueError(
                f"`num_steps` must be at least 2 for mode 'sde' (its last step is apart); got {num_steps}."
            )
        options = {
            "sampler": "sde-euler",
            "num_steps": num_steps - 1,
            "diffusion": "linear",
            "last_step": "mean",
            "last_step_size": 0.04,
        }
    else:
        options = {"sampler": "heun-euler-last" if heun else "euler", "num_steps": num_steps}
    if cfg_scale < 1.0:
        raise ValueError(f"`cfg_scale` must be at least 1, as REPA's generate.py asks; got {cfg_scale!r}.")
    if cfg_scale > 1.0:
        options["cfg_scale"] = float(cfg_scale)
        if (guidance_low, guidance_high) != (0.0, 1.0):
            options["guidance_interval"] = (float(guidance_low), float(guidance_high))
    return options


# --- reading -----------------------------------------------------------------------------------


def _read(source, weights):
    """`(state, arguments)`: float32 arrays in the current layout, and `train.py`'s arguments as a dict."""
    if isinstance(source, (str, os.PathLike)):
        source = read_checkpoint(source, allowed_globals=[argparse.Namespace])
    if not isinstance(source, dict):
        raise TypeError(f"`source` must be a path to a .pt file or a state dict; got {type(source).__name__}.")
    arguments = {}
    if any(isinstance(source.get(key), dict) for key in WEIGHTS):  # a train.py checkpoint
        if not isinstance(source.get(weights), dict):
            present = [key for key in WEIGHTS if isinstance(source.get(key), dict)]
            raise ValueError(f"`weights`={weights!r}, but the checkpoint holds only {present} weights.")
        args = source.get("args")
        if args is not None and not isinstance(args, (argparse.Namespace, dict)):
            raise ValueError(f"The checkpoint's `args` must be an argparse.Namespace; got {type(args).__name__}.")
        arguments = dict(vars(args) if isinstance(args, argparse.Namespace) else args or {})
        source = source[weights]
    return float32_arrays(strip_data_parallel_prefix(source)), arguments


def _block_indices(state, prefix):
    return {int(key.split(".")[1]) for key in state if key.startswith(prefix + ".")}


def _agree(name, given, found, where):
    """`found` (from the file), after checking that `given` (an argument, or None) agrees with it."""
    if given is not None and found is not None and given != found:
        raise ValueError(f"`{name}`={given!r} contradicts the checkpoint, whose {where} gives {found!r}.")
    return found if found is not None else given


def _shape(state, key, ndim):
    if key not in state:
        raise ValueError(f"`source` is not a REPA SiT state dict: no key {key!r}.")
    if state[key].ndim != ndim:
        raise ValueError(f"`source[{key!r}]` must have {ndim} dimensions; got shape {state[key].shape}.")
    return state[key].shape


def _architecture(state, arguments, encoder_depth, num_heads, overrides):
    """The `SiT` arguments the file fixes, and `encoder_depth`; renames legacy keys in `state`."""
    if encoder_depth is not None:
        check_positive_int("encoder_depth", encoder_depth)
    encoder_depth = _agree("encoder_depth", encoder_depth, arguments.get("encoder_depth"), "`args.encoder_depth`")
    legacy = _block_indices(state, "decoder_blocks")
    if legacy:  # REPA's first layout: `blocks` up to encoder_depth, `decoder_blocks` after
        encoder_depth = _agree("encoder_depth", encoder_depth, len(_block_indices(state, "blocks")), "legacy layout")
        for key in [key for key in state if key.startswith("decoder_blocks.")]:
            parts = key.split(".")
            state[".".join(["blocks", str(int(parts[1]) + encoder_depth), *parts[2:]])] = state.pop(key)

    hidden, channels, p, p_w = _shape(state, "x_embedder.proj.weight", 4)
    if p != p_w:
        raise ValueError(f"Patches must be square; `x_embedder.proj.weight` has shape {(hidden, channels, p, p_w)}.")
    _, tokens, _ = _shape(state, "pos_embed", 3)
    side = math.isqrt(tokens)
    if side * side != tokens:
        raise ValueError(f"`pos_embed` has {tokens} tokens: REPA's SiT has a square grid.")
    resolution = arguments.get("resolution")
    if resolution is not None and resolution // 8 != side * p:
        raise ValueError(f"`args.resolution` {resolution} does not fit latents of side {side * p} (resolution / 8).")
    out_rows, decoder_hidden = _shape(state, "final_layer.linear.weight", 2)
    if out_rows != p * p * channels:
        raise ValueError(
            f"`final_layer.linear.weight` has {out_rows} rows; REPA's final layer has p*p*C = {p * p * channels} "
            "(no sigma outputs). An official SiT file loads with `keras_sit.import_official_checkpoint`."
        )
    if decoder_hidden != hidden:
        raise ValueError(f"The final layer takes {decoder_hidden} features but the blocks give {hidden}.")
    qk_norm = "blocks.0.attn.q_norm.weight" in state
    _agree("qk_norm", arguments.get("qk_norm"), qk_norm, "q_norm keys")
    if qk_norm:
        head_dim = _shape(state, "blocks.0.attn.q_norm.weight", 1)[0]
        num_heads = _agree("num_heads", num_heads, int(hidden // head_dim), "q_norm width")
    elif num_heads is None:
        num_heads = OFFICIAL_NUM_HEADS.get(int(hidden))
        if num_heads is None:
            raise ValueError(
                f"The number of heads is not in this state dict and hidden_size {hidden} is not a REPA width "
                f"({sorted(OFFICIAL_NUM_HEADS)}): pass `num_heads=`."
            )
    rows = _shape(state, "y_embedder.embedding_table.weight", 2)[0]
    _agree("num_classes", arguments.get("num_classes"), rows - 1, "label table (classes plus the null row)")
    depth = len(_block_indices(state, "blocks"))
    fixed = {
        "input_shape": (int(side * p), int(side * p), int(channels)),
        "patch_size": int(p),
        "hidden_size": int(hidden),
        "depth": depth,
        "num_heads": int(num_heads),
        "mlp_ratio": _shape(state, "blocks.0.mlp.fc1.weight", 2)[0] / hidden if depth else 4.0,
        "qk_norm": qk_norm,
        "num_classes": int(rows - 1),
        "learn_sigma": False,
        "time_embedding_scale": 1,
        "time_convention": "keras_sit",
    }
    for key, value in fixed.items():
        given = overrides.get(key, value)
        if (tuple(given) if key == "input_shape" else given) != value:
            raise ValueError(f"`{key}`={given!r} contradicts the REPA checkpoint, which has {value!r}.")
    return {**fixed, "encoder_depth": encoder_depth}


def _training(arguments):
    """The `SiT` training settings that REPA's `train.py` arguments imply (defaults for a bare state dict)."""
    settings = {"class_dropout_prob": LABEL_DROPOUT}
    if arguments.get("legacy"):  # labels dropped in train.py too: a label survives both drops
        settings["class_dropout_prob"] = 1.0 - (1.0 - LABEL_DROPOUT) * (1.0 - float(arguments.get("cfg_prob", 0.1)))
    path_type = arguments.get("path_type", "linear")
    if path_type not in PATH_TYPES:
        raise ValueError(f"`args.path_type` must be one of {sorted(PATH_TYPES)}; got {path_type!r}.")
    settings["path"] = PATH_TYPES[path_type]
    if arguments.get("weighting") == "lognormal" and path_type == "linear":
        settings.update(time_sampler="logit_normal", time_loc=0.0, time_scale=1.0)
    return settings


def _alignment(state, arguments, encoder_depth, feature_keys):
    """The `RepresentationAlignment` arguments of the file's projectors, or None if it has none."""
    count = len(_block_indices(state, "projectors"))
    if not count:
        return None
    if encoder_depth is None:
        raise ValueError(
            "The checkpoint has projectors but does not say which block they read: pass `encoder_depth=` "
            "(REPA's --encoder-depth: 8 for its SiT-XL/2 and SiT-L/2, 4 for SiT-B/2)."
        )
    dims = tuple(int(_shape(state, f"projectors.{k}.4.weight", 2)[0]) for k in range(count))
    if feature_keys is None and count > 1:
        names = [name.strip() for name in str(arguments.get("enc_type") or "").split(",") if name.strip()]
        names = ["".join(c if c.isalnum() else "_" for c in name) for name in names]
        feature_keys = tuple(names) if len(set(names)) == count else tuple(f"features_{k}" for k in range(count))
    return {
        "depth": int(encoder_depth),
        "feature_dims": dims,
        "feature_keys": feature_keys,
        "projector": "mlp",
        "projector_dim": int(_shape(state, "projectors.0.0.weight", 2)[0]),
        "weight": float(arguments.get("proj_coeff", DEFAULT_PROJ_COEFF)),
    }


def _alignment_projectors(sit):
    """The MLP projectors of `sit`'s `RepresentationAlignment` objective (none without one)."""
    heads = [objective for objective in sit.objectives if isinstance(objective, RepresentationAlignment)]
    if len(heads) > 1:
        raise ValueError("REPA's SiT has one set of projectors; `sit` has several alignment objectives.")
    if not heads:
        return []
    if heads[0].projector_kind != "mlp":
        raise ValueError("REPA's projectors are MLPs; `sit` aligns through iREPA's convolution (projector='conv').")
    return heads[0].projectors


def _rows(sit):
    """`{REPA key: (Keras variable, kind)}` for every weight of `sit` that REPA's layout holds."""
    network = [(key, (variable, kind)) for key, variable, kind in sit_variables(sit.backbone)]
    projectors = []
    for index, projector in enumerate(_alignment_projectors(sit)):
        for layer, dense in zip(PROJECTOR_LAYERS, projector.layers):
            projectors.append((f"projectors.{index}.{layer}.weight", (dense.kernel, "dense")))
            projectors.append((f"projectors.{index}.{layer}.bias", (dense.bias, "plain")))
    final = next(i for i, (key, _) in enumerate(network) if key.startswith("final_layer."))
    return dict(network[:final] + projectors + network[final:])  # REPA's order: projectors before final_layer


def _assign(sit, state):
    """Assign every weight of `state` to `sit`, after checking that keys and shapes all fit."""
    rows = _rows(sit)
    missing, unexpected = sorted(set(rows) - set(state)), sorted(set(state) - set(rows))
    if missing or unexpected:
        raise ValueError(
            f"`source` does not fit the inferred SiT: missing keys {missing}, unexpected keys {unexpected}."
        )
    p, channels = sit.backbone.patch_size, sit.data_shape[2]
    assign_torch_weights(
        rows, state, "REPA SiT", convert=lambda kind, value: from_torch_layout(value, kind, p, channels)
    )
