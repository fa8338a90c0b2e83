"""Reading checkpoint files into NumPy without running pickled code.

Users download weights as safetensors or as PyTorch pickles (`.pt`, `.pth`,
`.bin`, `.ckpt`). Safetensors are read with the `safetensors` package's NumPy
API, without torch. Pickles need torch to read whatever the Keras backend,
and are read with `torch.load(weights_only=True)`, which admits only
tensors, plain containers and the classes a caller allows explicitly, so a
file cannot run code while it loads.
"""

import io
import os
import pickle
import pickletools
import zipfile

import numpy as np

SAFETENSORS_SUFFIXES = (".safetensors",)
PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")


def read_checkpoint(path, allowed_globals=()):
    """The object stored in the checkpoint file `path` (a dict of arrays or tensors for a state dict).

    Args:
        path: a `.safetensors` file, or a PyTorch pickle (`.pt`, `.pth`,
            `.bin`, `.ckpt`).
        allowed_globals: classes a pickle may hold besides tensors and
            containers (e.g. `argparse.Namespace`).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No checkpoint file at `path` {path!r}.")
    if path.endswith(SAFETENSORS_SUFFIXES):
        return _read_safetensors(path)
    if not path.endswith(PICKLE_SUFFIXES):
        raise ValueError(
            f"`path` {path!r} must end in one of {SAFETENSORS_SUFFIXES + PICKLE_SUFFIXES}: "
            "a safetensors file or a PyTorch pickle."
        )
    import torch

    try:
        with torch.serialization.safe_globals(list(allowed_globals)):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        # torch reports every failure of its weights-only unpickler alike ("Weights only load failed"),
        # random bytes too; what the file holds tells code from garbage.
        if "Weights only load failed" in str(error) and _imports_objects(path):
            raise ValueError(
                f"Refused to load `path` {path!r}: it holds objects other than tensors and containers, "
                "and unpickling them could run code."
            ) from error
        reason = error.__context__ if isinstance(error.__context__, pickle.UnpicklingError) else error
        first_line = (str(reason).strip().splitlines() or [""])[0]
        raise ValueError(
            f"`path` {path!r} is not a PyTorch checkpoint (a zip archive or pickle of tensors): "
            f"reading it failed with {type(reason).__name__}: {first_line}"
        ) from error
    except (KeyError, IndexError, EOFError, ValueError, RuntimeError) as error:  # what torch raises on other bytes
        raise ValueError(
            f"`path` {path!r} is not a PyTorch checkpoint (a zip archive or pickle of tensors): "
            f"reading it failed with {type(error).__name__}: {error}"
        ) from error


IMPORTING_OPCODES = ("GLOBAL", "STACK_GLOBAL", "INST")  # the pickle opcodes that name a class or function
LEGACY_PICKLES = 5  # torch's legacy format: magic number, protocol, system info, the object, storage keys


def _imports_objects(path):
    """Whether `path` holds well-formed pickles that import classes or functions (a reason to refuse it).

    The pickles are parsed, never run: a torch zip archive's `data.pkl`, or the
    pickles at the start of a legacy file. Bytes that are no pickle (a
    corrupt or foreign file) import nothing.
    """
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as archive:
                streams = [archive.read(name) for name in archive.namelist() if name.endswith("data.pkl")]
        except (zipfile.BadZipFile, OSError, EOFError, RuntimeError):
            return False
        return any(_pickle_opcodes(io.BytesIO(stream), 1) & set(IMPORTING_OPCODES) for stream in streams)
    with open(path, "rb") as file:
        return bool(_pickle_opcodes(file, LEGACY_PICKLES) & set(IMPORTING_OPCODES))


def _pickle_opcodes(file, count):
    """The names of the opcodes of the first `count` well-formed pickles in `file` (stops at the first bad one)."""
    names = set()
    for _ in range(count):
        found = set()
        try:
            for opcode, _, _ in pickletools.genops(file):
                found.add(opcode.name)
        except Exception:  # not a pickle (from here on): pickletools raises ValueError and others
            return names
        names |= found
    return names


def _read_safetensors(path):
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    try:
        return load_file(path)
    except SafetensorError as error:
        raise ValueError(f"`path` {path!r} is not a safetensors file: {error}") from error
    except TypeError as error:  # NumPy has no bfloat16: read those through torch
        if "bfloat16" not in str(error) and "bf16" not in str(error).lower():
            raise
        from safetensors.torch import load_file as load_torch_file

        return load_torch_file(path)


def float32_arrays(state):
    """`{key: float32 NumPy array}` from a state dict of torch tensors (any dtype) or arrays."""
    arrays = {}
    for key, value in state.items():
        if hasattr(value, "detach"):  # a torch tensor, possibly bf16
            value = value.detach().cpu().float().numpy()
        try:
            arrays[key] = np.asarray(value, dtype=np.float32)
        except (TypeError, ValueError) as error:
            raise ValueError(f"`source[{key!r}]` is not an array of weights: {type(value).__name__}.") from error
    return arrays


def assign_torch_weights(rows, state, model_name, convert=None):
    """Assign `state[key]` to the Keras variable of each `rows[key] = (variable, kind)`, all or none.

    PyTorch layouts become Keras': a `"conv"` kernel `[out, in, h, w]` is
    transposed to `[h, w, in, out]`, a `"dense"` kernel `[out, in]` to `[in,
    out]`; `convert(kind, value)`, if given, turns the other kinds. Every
    weight is checked before any is assigned, so a wrong file leaves the model
    untouched; the `ValueError` names each weight of the wrong shape.
    """
    values, wrong = {}, []
    for key, (variable, kind) in rows.items():
        value = state[key]
        if kind == "conv" and value.ndim == 4:
            value = value.transpose(2, 3, 1, 0)
        elif kind == "dense" and value.ndim == 2:
            value = value.T
        elif convert is not None:
            value = convert(kind, value)
        if tuple(value.shape) != tuple(variable.shape):
            wrong.append(f"{key} {tuple(state[key].shape)} (Keras variable {tuple(variable.shape)})")
        values[key] = value
    if wrong:
        raise ValueError(f"Checkpoint weights of the wrong shape for the {model_name}: {wrong}.")
    for key, (variable, _) in rows.items():
        variable.assign(values[key])


def weights_file(path, names):
    """`path` itself, or, for a folder, the first of the weights files `names` that it holds."""
    if not os.path.isdir(path):
        return path
    for name in names:
        if os.path.isfile(os.path.join(path, name)):
            return os.path.join(path, name)
    raise FileNotFoundError(f"The folder {path!r} holds none of {names}: pass the path of the weights file.")
