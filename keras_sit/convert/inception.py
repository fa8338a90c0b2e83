"""The FID Inception weights (pytorch-fid's `pt_inception-2015-12-05-6726825d.pth`) in and out.

The file is the state dict of torchvision's `Inception3(num_classes=1008,
aux_logits=False)` with pytorch-fid's blocks: per conv block
`<block>.conv.weight` and `<block>.bn.{weight, bias, running_mean,
running_var}` (e.g. `Conv2d_1a_3x3.conv.weight`,
`Mixed_5b.branch1x1.bn.running_var`), then `fc.weight` and `fc.bias`. The
Keras layers carry the same names, so each key maps onto one variable:
conv weights `(O, I, kh, kw)` become kernels `(kh, kw, I, O)`, `fc.weight`
`(O, I)` a kernel `(I, O)`, and the batch norms' weight, bias and running
statistics its gamma, beta and moving statistics. `num_batches_tracked`
entries (PyTorch's batch-norm bookkeeping, unused at inference) are ignored
when present. Files are read with `torch.load(weights_only=True)`, so
loading runs no pickled code (`keras_sit.convert.checkpoints`).
"""

import os

import numpy as np
from keras import ops

from keras_sit.convert.checkpoints import assign_torch_weights, float32_arrays, read_checkpoint
from keras_sit.evaluation.inception import FIDInception
from keras_sit.evaluation.inception_blocks import BasicConv2d, _split

# PyTorch BatchNorm2d entries and the Keras BatchNormalization variables they become.
_BATCH_NORM = (
    ("weight", "gamma"),
    ("bias", "beta"),
    ("running_mean", "moving_mean"),
    ("running_var", "moving_variance"),
)
_IGNORED_SUFFIX = ".num_batches_tracked"


def _conv_blocks(model):
    """`(module path, BasicConv2d)` of every conv block, in the PyTorch module order."""
    for layer in model._layers_to_6d() + model._layers_after_6d():
        if isinstance(layer, BasicConv2d):
            yield layer.name, layer
        elif hasattr(layer, "_branches"):  # a mixed block: its branches in order, forks flattened
            for branch in layer._branches():
                chain, fork = _split(branch)
                for sublayer in (*chain, *fork):
                    if isinstance(sublayer, BasicConv2d):
                        yield f"{layer.name}.{sublayer.name}", sublayer


def _parameters(model):
    """`[(state-dict key, Keras variable, kind)]` in the PyTorch state dict's order; kind: conv, dense, plain."""
    rows = []
    for prefix, block in _conv_blocks(model):
        rows.append((f"{prefix}.conv.weight", block.conv.kernel, "conv"))
        for torch_name, keras_name in _BATCH_NORM:
            rows.append((f"{prefix}.bn.{torch_name}", getattr(block.bn, keras_name), "plain"))
    rows.append(("fc.weight", model.fc.kernel, "dense"))
    rows.append(("fc.bias", model.fc.bias, "plain"))
    return rows


def export_fid_inception_state_dict(model):
    """The state dict (`{key: float32 array}`) of a `FIDInception` with pytorch-fid's keys, shapes and order.

    `num_batches_tracked` is left out; PyTorch's `load_state_dict` fills it in.
    """
    if not isinstance(model, FIDInception):
        raise TypeError(f"`model` must be a keras_sit FIDInception; got {type(model).__name__}.")
    state = {}
    for key, variable, kind in _parameters(model):
        value = np.asarray(ops.convert_to_numpy(variable), dtype=np.float32)
        if kind == "conv":
            value = value.transpose(3, 2, 0, 1)
        elif kind == "dense":
            value = value.T
        state[key] = np.ascontiguousarray(value)
    return state


def _read(path_or_state):
    """The state dict as float32 arrays, without `num_batches_tracked`; entries that are no weights raise."""
    if isinstance(path_or_state, (str, os.PathLike)):
        path = os.fspath(path_or_state)
        path_or_state = read_checkpoint(path)
        if not isinstance(path_or_state, dict):
            raise ValueError(
                f"`path_or_state` {path!r} holds a {type(path_or_state).__name__}, not a state dict of the "
                "FID Inception."
            )
    if not isinstance(path_or_state, dict):
        raise TypeError(
            "`path_or_state` must be a path to the weights file (.pth) or a state dict; "
            f"got {type(path_or_state).__name__}."
        )
    state = {key: value for key, value in path_or_state.items() if not str(key).endswith(_IGNORED_SUFFIX)}
    return float32_arrays(state, "path_or_state")


def import_fid_inception(path_or_state, **kwargs):
    """A `FIDInception` holding pytorch-fid's weights, marked as such (`holds_imported_weights`).

    A `FIDInception` refuses to compute features until it is so marked (or
    built with `allow_random_weights=True`); the mark is a variable saved
    and loaded with the weights.

    Args:
        path_or_state: `pt_inception-2015-12-05-6726825d.pth` (or another
            file with its keys: `.pth`, `.pt`, `.bin`, `.safetensors`), or
            its state dict of torch tensors or NumPy arrays.
        **kwargs: `FIDInception` arguments (`dtype`, `name`, `allow_random_weights`).

    Raises:
        ValueError: keys are missing or unexpected (naming them), or weights
            have the wrong shape (naming them).
    """
    state = _read(path_or_state)
    model = FIDInception(**kwargs)
    rows = {key: (variable, kind) for key, variable, kind in _parameters(model)}
    missing = sorted(set(rows) - set(state))
    unexpected = sorted(set(state) - set(rows))
    if missing or unexpected:
        raise ValueError(
            f"The checkpoint is not pytorch-fid's FID Inception: missing keys {missing}, unexpected keys {unexpected}."
        )
    assign_torch_weights(rows, state, "FID Inception")
    model.weights_imported.assign(1)  # lets `features` run; saved and loaded with the weights
    return model
