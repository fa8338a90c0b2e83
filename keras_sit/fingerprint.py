"""SHA-256 fingerprints: what records that two models compute the same thing, or that two sources hold the same data.

A latent cache records one for its autoencoder, for each teacher whose
features it stores and for its source (`keras_sit.latent_cache`), so that it
is only resumed by the same models on the same images; `LatentSiT.save_sit`
records the autoencoder's, to check the one it is loaded with.
"""

import hashlib

import numpy as np
from keras import ops


def weights_fingerprint(weights):
    """A SHA-256 (hex) of `weights` (tensors, variables or arrays), as float32, in the order given.

    `weights` must be a list or tuple of them (a model's `weights`, not the
    model): a `TypeError` names the first entry that holds no real numbers.
    """
    if not isinstance(weights, (list, tuple)):
        raise TypeError(
            "`weights` must be a list or tuple of tensors, variables or arrays (a model's `weights`); "
            f"got {type(weights).__name__}."
        )
    digest = hashlib.sha256()
    for index, weight in enumerate(weights):
        try:
            array = np.asarray(ops.convert_to_numpy(weight))
            if array.dtype.kind in "OSUc":  # objects, text, complex: no weights
                raise TypeError(f"dtype {array.dtype}")
            array = np.ascontiguousarray(array, "float32")  # bfloat16 (an ml_dtypes type) included
        except (TypeError, ValueError) as error:
            raise TypeError(
                f"`weights[{index}]` must be a tensor, variable or array of real numbers; got {type(weight).__name__} "
                f"({error})."
            ) from error
        digest.update(array.tobytes())
    return digest.hexdigest()


def arrays_fingerprint(*arrays):
    """A SHA-256 (hex) of NumPy `arrays`, their dtypes and shapes included; None counts as an absent array."""
    digest = hashlib.sha256()
    for array in arrays:
        if array is None:
            digest.update(b"none;")
            continue
        array = np.ascontiguousarray(array)
        digest.update(f"{array.dtype.str}{array.shape};".encode())
        digest.update(array)  # its buffer, without a copy
    return digest.hexdigest()
