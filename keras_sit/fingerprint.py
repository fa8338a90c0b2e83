"""A SHA-256 of a model's weights: what records that two models compute the same thing.

A latent cache records one for its autoencoder and for each teacher whose
features it stores, so that it is only resumed by the same models;
`LatentSiT.save_sit` records the autoencoder's, to check the one it is
loaded with.
"""

import hashlib

import numpy as np
from keras import ops


def weights_fingerprint(weights):
    """A SHA-256 (hex) of `weights` (tensors, variables or arrays), as float32, in the order given."""
    digest = hashlib.sha256()
    for weight in weights:
        digest.update(np.ascontiguousarray(ops.convert_to_numpy(weight), "float32").tobytes())
    return digest.hexdigest()
