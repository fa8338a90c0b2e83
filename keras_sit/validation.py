"""Argument and input checks, one validator per kind of argument.

Every public entry point checks what it is given here, before any backend
sees it, so bad input raises a `TypeError` or `ValueError` that names the
argument and says what was expected. The checks on data and labels are
static: they read only `.shape` and `.dtype`, so they work on arrays,
tensors, `keras.KerasTensor`s and `tf.TensorSpec`s alike.
"""

import inspect
import math

import keras
import numpy as np

SEED_LIMIT = 2**31 - 1  # seeds feed int32 generators


def check_positive_int(name, value, allow_none=False):
    """An int > 0 (NumPy ints included, bools not); None too if `allow_none`."""
    if value is None and allow_none:
        return
    if not isinstance(value, (int, np.integer)):
        raise TypeError(f"`{name}` must be a positive int; got {value!r} of type {type(value).__name__}.")
    if isinstance(value, bool) or value <= 0:  # a bool is an int of the wrong meaning
        raise ValueError(f"`{name}` must be a positive int; got {value!r}.")


def check_number(name, value, low=-math.inf, high=math.inf, include_low=True, include_high=False):
    """A finite real number (not a bool) between `low` and `high`; returns it as a float.

    The bounds are included or not by `include_low` and `include_high`.
    """
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float, np.integer, np.floating))
        or not math.isfinite(value)
    ):
        raise TypeError(f"`{name}` must be a finite number; got {value!r}.")
    above = value >= low if include_low else value > low
    below = value <= high if include_high else value < high
    if not (above and below):
        if (low, include_low, high) == (0.0, False, math.inf):
            raise ValueError(f"`{name}` must be positive; got {value!r}.")
        bounds = f"{'[' if include_low else '('}{low}, {high}{']' if include_high else ')'}"
        raise ValueError(f"`{name}` must be in {bounds}; got {value!r}.")
    return float(value)


def check_bool(name, value):
    if not isinstance(value, bool):
        raise TypeError(f"`{name}` must be a bool; got {value!r}.")


def check_choice(name, value, choices):
    """`value` is one of `choices` (compared with `==`, so None may be a choice)."""
    if not any(value == choice and type(value) is type(choice) for choice in choices):
        raise ValueError(f"`{name}` must be one of {tuple(choices)}; got {value!r}.")


def check_pair(name, value, low=None, high=None, strict=False):
    """A pair `(lo, hi)` of numbers with `lo <= hi` (`lo < hi` if `strict`),
    within `[low, high]` where given; returns it as floats."""
    condition = f"lo {'<' if strict else '<='} hi"
    if low is None:
        expected = f"must be a pair (lo, hi) with {condition}"
    else:
        expected = f"must satisfy {low} <= {condition} <= {high}, a pair (lo, hi)"
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"`{name}` {expected}; got {value!r}.") from None
    inside = low is None or (low <= lo and hi <= high)
    if not (inside and (lo < hi if strict else lo <= hi)):
        raise ValueError(f"`{name}` {expected}; got {value!r}.")
    return lo, hi


def check_image_shape(name, value):
    """`(height, width, channels)` of positive ints; returns it as a tuple of ints."""
    if not isinstance(value, (tuple, list)) or len(value) != 3:
        raise ValueError(f"`{name}` must be (height, width, channels); got {value!r}.")
    for part, size in zip(("height", "width", "channels"), value):
        check_positive_int(f"{name} {part}", size)
    return tuple(int(size) for size in value)


def check_seed(seed, allow_generator=False):
    """An int in `[0, 2**31 - 1)`, or None; a `keras.random.SeedGenerator` too if `allow_generator`."""
    if seed is None or (allow_generator and isinstance(seed, keras.random.SeedGenerator)):
        return
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        kinds = "an int, a keras.random.SeedGenerator or None" if allow_generator else "an int or None"
        raise TypeError(f"`seed` must be {kinds}; got {seed!r}.")
    if not 0 <= seed < SEED_LIMIT:
        raise ValueError(f"`seed` must be in [0, 2**31 - 1) (it seeds int32 generators); got {seed}.")


def check_float_dtype(name, dtype):
    """None, or a float dtype or dtype policy (`"float32"`, `"mixed_bfloat16"`, ...)."""
    if dtype is None:
        return
    try:
        policy = keras.dtype_policies.get(dtype)
        floats = all(keras.backend.is_float_dtype(d) for d in (policy.compute_dtype, policy.variable_dtype))
    except (TypeError, ValueError):
        floats = False
    if not floats:
        raise ValueError(
            f"`{name}` must be a float dtype or dtype policy (e.g. 'float32', 'mixed_bfloat16'); got {dtype!r}."
        )


def keyword_defaults(function, exclude=()):
    """`{name: default}` of `function`'s named arguments, `self` and `exclude` left out.

    Lets a class's signature be the one declaration of its configuration:
    callers that forward those arguments read their names from here.
    """
    parameters = inspect.signature(function).parameters.items()
    return {
        name: parameter.default
        for name, parameter in parameters
        if parameter.kind is parameter.POSITIONAL_OR_KEYWORD and name != "self" and name not in exclude
    }


def resolve_depth_alias(config, default_depth):
    """Read `num_layers` in the dict `config` as `depth` (in place).

    `num_layers` is the name of the reference API; both may be given only if
    they agree (or `depth` is its default).
    """
    if "num_layers" not in config:
        return config
    num_layers = config.pop("num_layers")
    depth = config.get("depth", default_depth)
    if depth not in (default_depth, num_layers):
        raise ValueError(f"`num_layers` is an alias of `depth`; got depth={depth}, num_layers={num_layers}.")
    config["depth"] = num_layers
    return config


# --- data -------------------------------------------------------------------------------


def shape_of(x):
    """The static shape of an array, tensor, spec or nested list, as a tuple (None where unknown)."""
    return tuple(x.shape) if hasattr(x, "shape") else np.shape(x)


def dtype_of(x):
    """`x`'s dtype as Keras names it, or NumPy's name for those Keras has none for (strings, objects)."""
    dtype = x.dtype if hasattr(x, "dtype") else np.asarray(x).dtype
    try:
        return keras.backend.standardize_dtype(dtype)
    except ValueError:
        return getattr(dtype, "name", str(dtype))


def check_real_dtype(name, x):
    """`x` holds real numbers: an int or float dtype (not bools, strings or objects)."""
    dtype = dtype_of(x)
    if "int" not in dtype and "float" not in dtype:
        raise TypeError(f"`{name}` must be an array of real numbers (an int or float dtype); got dtype {dtype}.")


def check_same_shape(name, value, like_name, like):
    """`value` has the shape of `like` (an unknown dimension matches any)."""
    shape, expected = shape_of(value), shape_of(like)
    if len(shape) != len(expected) or any(a is not None and b is not None and a != b for a, b in zip(shape, expected)):
        raise ValueError(f"`{name}` must have the shape of `{like_name}`, {expected}; got shape {shape}.")


def check_per_example(name, value, batch):
    """A scalar, or one value per example: shape `[batch]` (a `batch` of None matches any length)."""
    shape = shape_of(value)
    if shape and (len(shape) != 1 or (None not in (batch, shape[0]) and shape[0] != batch)):
        raise ValueError(f"`{name}` must be a scalar or have shape ({batch},), one per example; got shape {shape}.")


def check_data(x, data_shape, name, static=False):
    """`x` is `[B, *data_shape]` (any batch size) of real numbers.

    An unknown size (None) passes, as in a dataset's spec, unless `static`:
    a traced training step (TensorFlow's graph) needs every size but the
    batch's, and gets None when the batches of its input differ in shape.
    """
    shape = shape_of(x)
    kind = "images (batch, height, width, channels)" if len(data_shape) == 3 else "vectors (batch, dim)"
    expected = ", ".join(map(str, data_shape))
    if len(shape) != len(data_shape) + 1 or any(s is not None and s != d for s, d in zip(shape[1:], data_shape)):
        raise ValueError(f"`{name}` must be {kind} of shape (batch, {expected}); got shape {shape}.")
    if static and None in shape[1:]:
        raise ValueError(
            f"`{name}` must be {kind} of shape (batch, {expected}); got shape {shape}: the batches of the "
            "input differ in shape, or it does not declare their shape."
        )
    check_real_dtype(name, x)


def check_labels(labels, batch, name="labels"):
    """Integer class indices of shape `[B]` (or `[B, 1]`)."""
    shape = shape_of(labels)
    if len(shape) == 2 and shape[1] == 1:
        shape = shape[:1]
    if len(shape) != 1:
        raise ValueError(f"`{name}` must be class indices of shape (batch,); got shape {shape}.")
    if shape[0] is not None and batch is not None and shape[0] != batch:
        raise ValueError(f"`{name}` must have one label per example ({batch}); got {shape[0]}.")
    dtype = dtype_of(labels)
    if "int" not in dtype:
        raise TypeError(f"`{name}` must be integer class indices; got dtype {dtype}.")


def in_memory(x):
    """Whether `x` holds its values here (a NumPy array or a backend tensor), not a spec or a symbol."""
    return isinstance(x, np.ndarray) or (keras.ops.is_tensor(x) and not isinstance(x, keras.KerasTensor))


def check_finite(x, name):
    """No NaN or Inf in `x`, if it holds its values here (`in_memory`); streamed data is checked in the step."""
    if not in_memory(x):
        return
    values = np.asarray(keras.ops.convert_to_numpy(x))
    if np.issubdtype(values.dtype, np.floating):
        bad = np.size(values) - np.count_nonzero(np.isfinite(values))
        if bad:
            raise ValueError(f"`{name}` holds {bad} non-finite values (NaN or Inf); it must be finite.")


def check_label_values(labels, num_classes, name="labels"):
    """Class indices in `[0, num_classes)`."""
    values = np.asarray(keras.ops.convert_to_numpy(labels))
    if values.size and (values.min() < 0 or values.max() >= num_classes):
        raise ValueError(
            f"`{name}` must lie in [0, {num_classes}) (num_classes={num_classes}); "
            f"got values in [{values.min()}, {values.max()}]."
        )


def split_inputs(inputs, extra_keys=()):
    """`x`, `(x, labels)` or `{"x": x, "labels": labels, **extras}` -> `(x, labels)`.

    `extra_keys` are the other keys a dict may (and then must) hold: the
    per-example inputs that the model's objectives read.
    """
    if isinstance(inputs, dict):
        unknown = set(inputs) - {"x", "labels", *extra_keys}
        if "x" not in inputs or unknown:
            raise ValueError(
                "`x` as a dict must have the key 'x' and optionally 'labels'"
                + (f" and {sorted(extra_keys)}" if extra_keys else "")
                + f"; got keys {sorted(inputs)}."
            )
        return inputs["x"], inputs.get("labels")
    if isinstance(inputs, (tuple, list)):
        if len(inputs) != 2:
            raise ValueError(f"Tuple inputs must be `(x, labels)`; got {len(inputs)} elements.")
        return tuple(inputs)
    return inputs, None


def element_spec_inputs(x, y, extra_keys=()):
    """What static checks can see of `fit`'s `x, y` before training: arrays,
    tensors, or a `tf.data.Dataset`'s element spec, as `(x, labels)`."""
    if hasattr(x, "element_spec"):  # tf.data.Dataset
        spec = x.element_spec
        x, y = (spec[0], spec[1] if len(spec) > 1 else None) if isinstance(spec, tuple) else (spec, None)
    if isinstance(x, dict):
        x, labels = split_inputs(x, extra_keys)
        y = y if labels is None else labels
    return x, y


def sampling_labels(labels, num_samples, num_classes, null_class):
    """Labels for sampling as an int32 NumPy array `[num_samples]`, or None.

    An int is one class for every sample. Classes lie in `[0, num_classes)`:
    the null class is not a label. None asks a conditional model (which must
    have a null class) for unconditional samples, and gives the null class.
    """
    if num_classes is None:
        if labels is not None:
            raise ValueError("`labels` were given, but this SiT is unconditional (num_classes=None).")
        return None
    if labels is None:
        if null_class is None:
            raise ValueError("This conditional SiT has no null class (class_dropout_prob=0): `labels` are required.")
        return np.full((num_samples,), null_class, "int32")
    labels = np.asarray(labels)
    if labels.ndim == 0:
        labels = np.full((num_samples,), labels)
    if not np.issubdtype(labels.dtype, np.integer):
        raise TypeError(f"`labels` must be integers; got dtype {labels.dtype}.")
    if labels.shape != (num_samples,):
        raise ValueError(f"`labels` must have shape ({num_samples},) (one per sample); got {labels.shape}.")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(
            f"`labels` must lie in [0, {num_classes}); got values in [{labels.min()}, {labels.max()}] "
            "(for unconditional samples pass `labels=None`)."
        )
    return labels.astype("int32")
