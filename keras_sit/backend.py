"""The one place for backend-specific code.

Everything else in keras_sit is written against `keras.ops` and runs unchanged
on JAX, TensorFlow and PyTorch. What Keras does not abstract lives here.
"""

import contextlib

import keras


def no_grad():
    """Context for inference loops: on PyTorch, stop autograd from recording.

    Without it, a sampling loop over a model whose variables require grad
    builds a graph through every step and grows memory with the step count.
    JAX and TensorFlow record nothing outside their gradient transforms.
    """
    if keras.backend.backend() == "torch":
        import torch

        return torch.no_grad()
    return contextlib.nullcontext()
