"""Integrators over `keras.ops`, usable with any drift `f(x, t) -> dx/dt`.

Keras ships no ODE/SDE solvers, so these are written here. `t` is passed to
the drift as a `[B]` tensor. With the library's convention, sampling runs from
`t = 1` (noise) to `t = 0` (data).
"""

from keras import ops


def euler(drift, x, num_steps, t_start=1.0, t_end=0.0):
    """Fixed-step Euler from `t_start` to `t_end` in `num_steps` steps.

    The loop is an `ops.fori_loop` (a compiled `lax.fori_loop` on JAX, a
    `tf.while_loop` on TensorFlow, a Python loop on PyTorch).
    """
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps <= 0:
        raise ValueError(f"`num_steps` must be a positive int; got {num_steps!r}.")
    step = (t_end - t_start) / num_steps
    batch = ops.shape(x)[0]

    def body(i, x):
        t = ops.cast(t_start + ops.cast(i, "float32") * step, x.dtype) * ops.ones((batch,), x.dtype)
        return ops.add(x, ops.multiply(step, drift(x, t)))

    return ops.fori_loop(0, num_steps, body, x)
