"""MeanFlow's training loss as the official JAX code computes it (`meanflow.py`, `MeanFlow.forward`), in NumPy.

It follows the official forward pass line by line for given draws (`t`,
`r`, the noise `e` and the dropped labels), with the network of
`tests.reference.backbone` in float64. The one substitution: `jax.jvp` of
the network along `(v_g, 1, 0)` is a float64 central difference (step
`1e-5`, error about 1e-9 relative), far below the tolerances it is tested to.
"""

import numpy as np

from tests.reference import backbone


def expand(values):
    return values[:, None, None, None]


def mean_flow_loss(model, x, labels, t, r, e, dropped, omega, kappa, t_start, t_end, norm_p, norm_eps, delta=1e-5):
    """`(loss, u, u_tgt)` of the official `MeanFlow.forward` on images `x` `[B, H, W, C]`."""
    x, e = np.asarray(x, "float64"), np.asarray(e, "float64")
    t, r = np.asarray(t, "float64"), np.asarray(r, "float64")
    null_class = model.num_classes

    z_t = (1 - expand(t)) * x + expand(t) * e
    v = e - x

    # guidance_fn
    def v_fn(z, y):
        return backbone(model, z, t, y, r=t)  # h = 0

    if kappa == 0:
        v_uncond = v_fn(z_t, np.full_like(labels, null_class))
        w = np.where((t >= t_start) & (t <= t_end), omega, 1.0)
        v_g = v_uncond + expand(w) * (v - v_uncond)
    else:
        v_uncond = v_fn(z_t, np.full_like(labels, null_class))
        v_cond = v_fn(z_t, labels)
        w = np.where((t >= t_start) & (t <= t_end), omega, 1.0)
        k = np.where((t >= t_start) & (t <= t_end), kappa, 0.0)
        v_g = expand(w) * v + expand(1 - w - k) * v_uncond + expand(k) * v_cond

    # cond_drop
    y_inp = np.where(dropped, null_class, labels)
    v_g = np.where(expand(dropped), v, v_g)

    # u and du/dt along (dz, dt, dr) = (v_g, 1, 0)
    def u_fn(z, t_, r_):
        return backbone(model, z, t_, y_inp, r=r_)

    u = u_fn(z_t, t, r)
    du_dt = (u_fn(z_t + delta * v_g, t + delta, r) - u_fn(z_t - delta * v_g, t - delta, r)) / (2 * delta)

    u_tgt = v_g - expand(np.clip(t - r, 0.0, 1.0)) * du_dt
    loss = np.sum((u - u_tgt) ** 2, axis=(1, 2, 3))
    adp_wt = (loss + norm_eps) ** norm_p
    loss = loss / adp_wt
    return loss.mean(), u, u_tgt
