"""Reading checkpoint files into NumPy without running pickled code.

Users download weights as safetensors or as PyTorch pickles (`.pt`, `.pth`,
`.bin`, `.ckpt`). Safetensors are read with the `safetensors` package's NumPy
API, without torch. Pickles need torch to read whatever the Keras backend,
and are read with `torch.load(weights_only=True)`, which admits only
tensors, plain containers and the classes a caller allows explicitly, so a
file cannot run code while it loads. What is read is checked before it
becomes a model's weights: a file that is no checkpoint, a pickle of other
objects, a damaged `config.json`, and entries that are no floating-point
weights (integers, booleans, text) or hold NaN or infinities each raise an
error that names the file or the entry.
"""

import io
import os
import pickle
import pickletools
import zipfile
from collections.abc import Mapping

import numpy as np

from keras_sit.files import read_json_object

SAFETENSORS_SUFFIXES = (".safetensors",)
PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")


def read_checkpoint(path, allowed_globals=()):
    """The object stored in the checkpoint file `path` (a dict of arrays or tensors for a state dict).

    Args:
        path: a `.safetensors` file, or a PyTorch pickle (`.pt`, `.pth`,
            `.bin`, `.ckpt`).
        allowed_globals: classes a pickle may hold besides tensors and
            containers (e.g. `argparse.Namespace`), a list or tuple.

    Raises:
        FileNotFoundError: there is no such file.
        ValueError: `path` is a folder, has another suffix, is no checkpoint
            of its kind (random or damaged bytes), or is a pickle that names
            classes or functions other than torch's and `allowed_globals`,
            which unpickling would import and call.
    """
    if not isinstance(path, (str, os.PathLike)) or not isinstance(os.fspath(path), str):
        raise TypeError(
            f"`path` must be the path of a checkpoint file (a str or os.PathLike); got {type(path).__name__}."
        )
    path = os.fspath(path)
    if os.path.isdir(path):
        raise ValueError(
            f"`path` {path!r} is a folder; a checkpoint file ({', '.join(SAFETENSORS_SUFFIXES + PICKLE_SUFFIXES)}) "
            "was expected."
        )
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No checkpoint file at `path` {path!r}.")
    _check_allowed_globals(allowed_globals)
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
        imported = _imported_objects(path, allowed_globals) if "Weights only load failed" in str(error) else []
        if imported:
            raise ValueError(
                f"Refused to load `path` {path!r}: it holds objects other than tensors and containers "
                f"({', '.join(imported[:5])}), and unpickling them could run code. Pass the classes you trust as "
                "`allowed_globals`, or convert the file to safetensors."
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


LEGACY_PICKLES = 5  # torch's legacy format: magic number, protocol, system info, the object, storage keys
# What torch's weights-only unpickler admits where its own list cannot be read.
TORCH_GLOBALS = ("collections.OrderedDict", "builtins.set", "builtins.bytearray", "builtins.complex", "_codecs.encode")
_STRING_OPCODES = frozenset(
    ("STRING", "BINSTRING", "SHORT_BINSTRING", "UNICODE", "BINUNICODE", "SHORT_BINUNICODE", "BINUNICODE8")
)
_MARK, _OBJECT = object(), object()  # what the parser keeps on its stack besides strings


def _check_allowed_globals(allowed_globals):
    """`allowed_globals` is a list or tuple of classes or functions (or torch's `(object, "module.name")` pairs)."""
    if not isinstance(allowed_globals, (list, tuple)):
        raise TypeError(
            "`allowed_globals` must be a list or tuple of classes (e.g. [argparse.Namespace]); "
            f"got {type(allowed_globals).__name__}."
        )
    for entry in allowed_globals:
        pair = isinstance(entry, tuple) and len(entry) == 2 and callable(entry[0]) and isinstance(entry[1], str)
        if not (callable(entry) or pair):
            raise TypeError(
                f"`allowed_globals` must hold classes or functions (e.g. argparse.Namespace); got {entry!r}."
            )


def _allowed_names(allowed_globals):
    """A test of a pickled global's `"module.name"`: on torch's weights-only list, or one of `allowed_globals`."""
    extra = set()
    for entry in allowed_globals:
        if isinstance(entry, tuple):
            extra.add(entry[1])
        else:
            module = getattr(entry, "__module__", "")
            extra |= {f"{module}.{getattr(entry, attribute, '')}" for attribute in ("__name__", "__qualname__")}
    try:
        from torch import _weights_only_unpickler

        listed = set(_weights_only_unpickler._get_allowed_globals()) | extra
    except (ImportError, AttributeError):  # a torch without the list: its own classes and functions
        return lambda name: name in extra or name.startswith("torch.") or name in TORCH_GLOBALS
    return lambda name: name in listed


def _imported_objects(path, allowed_globals):
    """The classes and functions (`"module.name"`) that the pickles of `path` import, less those torch admits.

    The pickles are parsed, never run: a torch zip archive's `data.pkl`, or
    the pickles at the start of a legacy file. Only well-formed pickles count
    (`_pickle_globals`), so bytes that are no pickle (a corrupt or foreign
    file, random bytes that happen to read as opcodes) import nothing, and
    the file is reported as no checkpoint rather than as code.
    """
    allowed = _allowed_names(allowed_globals)
    found = set()
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as archive:
                streams = [archive.read(name) for name in archive.namelist() if name.endswith("data.pkl")]
        except (zipfile.BadZipFile, OSError, EOFError, RuntimeError, ValueError):
            return []
        for stream in streams:
            found |= _pickle_globals(io.BytesIO(stream)) or set()
    else:
        with open(path, "rb") as file:
            for _ in range(LEGACY_PICKLES):
                names = _pickle_globals(file)
                if names is None:
                    break
                found |= names
    return sorted(name for name in found if not allowed(name))


def _pickle_globals(file):
    """The globals (`"module.name"`) that the pickle at `file`'s position names, or None if it is not well formed.

    Well formed: every opcode known and complete, the stack never popped
    below empty or across a mark, the memo read only where written, each
    STACK_GLOBAL given two strings, and STOP reached with one object on the
    stack. The pickle is parsed, never run; GLOBAL, INST and STACK_GLOBAL are
    the opcodes that import. `file` is left after the STOP.
    """
    names, stack, memo = set(), [], {}
    try:
        for opcode, arg, _ in pickletools.genops(file):
            name = opcode.name
            if name in ("PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE"):
                if not stack or stack[-1] is _MARK:
                    return None
                memo[len(memo) if name == "MEMOIZE" else arg] = stack[-1]
                continue
            if name in ("GET", "BINGET", "LONG_BINGET"):
                if arg not in memo:
                    return None
                stack.append(memo[arg])
                continue
            if name == "DUP":
                if not stack or stack[-1] is _MARK:
                    return None
                stack.append(stack[-1])
                continue
            before = list(opcode.stack_before)
            if pickletools.markobject in before or (name == "POP" and stack and stack[-1] is _MARK):
                if not any(item is _MARK for item in stack):
                    return None
                while stack.pop() is not _MARK:
                    pass
                before = before[: before.index(pickletools.markobject)] if pickletools.markobject in before else []
            count = len(before)
            popped = stack[len(stack) - count :] if count else []
            if count > len(stack) or any(item is _MARK for item in popped):
                return None
            del stack[len(stack) - count :]
            if name in ("GLOBAL", "INST"):
                module, _, qualname = arg.partition(" ")
                names.add(f"{module}.{qualname}")
            elif name == "STACK_GLOBAL":
                if not all(isinstance(part, str) for part in popped):
                    return None
                names.add(".".join(popped))
            if name in _STRING_OPCODES and isinstance(arg, str):
                stack.append(arg)
            else:
                stack.extend(_MARK if kind is pickletools.markobject else _OBJECT for kind in opcode.stack_after)
    except Exception:  # not a pickle: pickletools raises ValueError and others on bad bytes
        return None
    return None if stack else names


def _read_safetensors(path):
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    try:
        return load_file(path)
    except SafetensorError as error:
        raise ValueError(f"`path` {path!r} is not a safetensors file: {error}") from error
    except (TypeError, AttributeError) as error:  # a dtype NumPy lacks (bfloat16, float8): read those through torch
        try:
            from safetensors.torch import load_file as load_torch_file
        except ImportError:
            raise ValueError(
                f"`path` {path!r} holds tensors of a dtype NumPy cannot represent ({error}); reading it needs torch."
            ) from error
        return load_torch_file(path)


def read_config_json(path):
    """The JSON object in `path` (a `config.json` beside the weights), or None where there is no such file.

    A damaged one raises a `ValueError` naming the file, never skipped: the
    model would be built without it.
    """
    return read_json_object(path, "the model's config.json")


def check_state_dict(state, argument="source"):
    """`state` is a dict with string keys, or a `TypeError` names `argument`."""
    if not isinstance(state, Mapping):
        raise TypeError(f"`{argument}` must be a state dict (a dict of arrays or tensors); got {type(state).__name__}.")
    for key in state:
        if not isinstance(key, str):
            raise TypeError(f"`{argument}` must have string keys, as a state dict has; got the key {key!r}.")


def float32_arrays(state, argument="source"):
    """`{key: float32 NumPy array}` from a state dict of floating-point torch tensors or arrays.

    Every entry is checked before it can become a weight: one that is no
    array of numbers, one of integers or booleans (a step counter, an index
    buffer, a mask: no weight, and a float copy of it would load silently),
    and one holding NaN or infinity each raise a `ValueError` naming
    `` `argument[key]` `` and what it holds. float16, bfloat16, float32 and
    float64 are read.
    """
    check_state_dict(state, argument)
    arrays = {}
    for key, value in state.items():
        entry = f"`{argument}[{key!r}]`"
        if hasattr(value, "detach") and hasattr(value, "is_floating_point"):  # a torch tensor, possibly bf16
            if not value.is_floating_point():
                raise ValueError(
                    f"{entry} holds {value.dtype} values; weights must be floating-point "
                    "(float16, bfloat16, float32 or float64)."
                )
            array = value.detach().cpu().float().numpy()
        else:
            try:
                array = np.asarray(value)
            except (TypeError, ValueError) as error:  # ragged nesting
                raise ValueError(f"{entry} is not an array of weights: {type(value).__name__}.") from error
            floating = array.dtype.kind == "f" or array.dtype.name.startswith(("bfloat16", "float8"))  # ml_dtypes
            if array.dtype.kind in "OSUV" and not floating:
                raise ValueError(f"{entry} is not an array of weights: {type(value).__name__}.")
            if not floating:
                raise ValueError(
                    f"{entry} holds {array.dtype} values; weights must be floating-point "
                    "(float16, bfloat16, float32 or float64)."
                )
            with np.errstate(over="ignore"):  # float64 beyond float32 becomes infinite, and is reported below
                array = array.astype(np.float32)
        finite = np.isfinite(array)
        if not finite.all():
            raise ValueError(
                f"{entry} holds {int(finite.size - finite.sum())} NaN or infinite value(s) of {finite.size}; "
                "weights must be finite (a damaged or diverged checkpoint?)."
            )
        arrays[key] = array
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
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"`path` must be a file or folder path (a str or os.PathLike); got {type(path).__name__}.")
    path = os.fspath(path)
    if not os.path.isdir(path):
        return path
    for name in names:
        if os.path.isfile(os.path.join(path, name)):
            return os.path.join(path, name)
    raise FileNotFoundError(f"The folder {path!r} holds none of {names}: pass the path of the weights file.")
