"""REPA's samplers in PyTorch (float64), written from its `samplers.py`: `euler_sampler` (with and
without `heun`) and `euler_maruyama_sampler`, to check keras_sit's `"euler"`, `"heun-euler-last"`
and `"sde-euler"` against.

`model(x, t, y)` is any callable returning the velocity (REPA's SiT returns a tuple whose first
entry is used). REPA hard-codes the null class 1000 of ImageNet; here it is the argument
`null_class`. `euler_maruyama_sampler` takes its Gaussian draws `eps` (one `[B, ...]` array per
stochastic step, `num_steps - 1` of them) instead of calling `randn`. REPA, like keras_sit, puts
the data at t=0 and the noise at t=1, so its `t` is keras_sit's unchanged.
"""

import numpy as np
import torch


def expand_t_like_x(t, x_cur):
    """`t` `[B]` reshaped to `[B, 1, ..., 1]` to broadcast against `x_cur`."""
    dims = [1] * (len(x_cur.size()) - 1)
    return t.view(t.size(0), *dims)


def get_score_from_velocity(vt, xt, t, path_type="linear"):
    """The score of `x_t` from the velocity `vt` on the linear or cosine path."""
    t = expand_t_like_x(t, xt)
    if path_type == "linear":
        alpha_t, d_alpha_t = 1 - t, torch.ones_like(xt) * -1
        sigma_t, d_sigma_t = t, torch.ones_like(xt)
    elif path_type == "cosine":
        alpha_t = torch.cos(t * np.pi / 2)
        sigma_t = torch.sin(t * np.pi / 2)
        d_alpha_t = -np.pi / 2 * torch.sin(t * np.pi / 2)
        d_sigma_t = np.pi / 2 * torch.cos(t * np.pi / 2)
    else:
        raise NotImplementedError(path_type)
    mean = xt
    reverse_alpha_ratio = alpha_t / d_alpha_t
    var = sigma_t**2 - reverse_alpha_ratio * d_sigma_t * sigma_t
    return (reverse_alpha_ratio * vt - mean) / var


def compute_diffusion(t_cur):
    return 2 * t_cur


def _guided(cfg_scale, t_cur, guidance_low, guidance_high):
    """REPA's test, for every model call of a step: guide where the step's START time lies in the interval."""
    return cfg_scale > 1.0 and guidance_low <= t_cur <= guidance_high


def _call(model, x, y, y_null, t, guided, dtype):
    """The (guided) model output at `(x, t)`; REPA doubles the batch with the null class when guided."""
    if guided:
        model_input, y_cur = torch.cat([x] * 2, dim=0), torch.cat([y, y_null], dim=0)
    else:
        model_input, y_cur = x, y
    time_input = torch.ones(model_input.size(0), dtype=torch.float64) * t
    return model_input, time_input, model(model_input.to(dtype), time_input.to(dtype), y_cur).to(torch.float64)


def _combine(d, cfg_scale, guided):
    if not guided:
        return d
    d_cond, d_uncond = d.chunk(2)
    return d_uncond + cfg_scale * (d_cond - d_uncond)


@torch.no_grad()
def euler_sampler(
    model, latents, y, null_class, num_steps=20, heun=False, cfg_scale=1.0, guidance_low=0.0, guidance_high=1.0
):
    """REPA's ODE sampler on `t_i = 1 - i / num_steps`; with `heun`, Heun steps but an Euler last step.

    Both model calls of a Heun step are guided or not by `t_cur`, the step's start.
    """
    y_null = torch.full_like(y, null_class)
    dtype = latents.dtype
    t_steps = torch.linspace(1, 0, num_steps + 1, dtype=torch.float64)
    x_next = latents.to(torch.float64)
    for i, (t_cur, t_next) in enumerate(zip(t_steps[:-1], t_steps[1:])):
        x_cur = x_next
        guided = _guided(cfg_scale, t_cur, guidance_low, guidance_high)
        d_cur = _combine(_call(model, x_cur, y, y_null, t_cur, guided, dtype)[2], cfg_scale, guided)
        x_next = x_cur + (t_next - t_cur) * d_cur
        if heun and i < num_steps - 1:
            d_prime = _combine(_call(model, x_next, y, y_null, t_next, guided, dtype)[2], cfg_scale, guided)
            x_next = x_cur + (t_next - t_cur) * (0.5 * d_cur + 0.5 * d_prime)
    return x_next


def _sde_drift(model, x_cur, y, y_null, t_cur, cfg_scale, guidance_low, guidance_high, path_type, dtype):
    """`v - w s / 2` at `t_cur` with `w = 2 t`, guided after the conversion, as REPA."""
    guided = _guided(cfg_scale, t_cur, guidance_low, guidance_high)
    model_input, time_input, v_cur = _call(model, x_cur, y, y_null, t_cur, guided, dtype)
    s_cur = get_score_from_velocity(v_cur, model_input, time_input, path_type=path_type)
    d_cur = v_cur - 0.5 * compute_diffusion(t_cur) * s_cur
    return _combine(d_cur, cfg_scale, guided)


@torch.no_grad()
def euler_maruyama_sampler(
    model,
    latents,
    y,
    null_class,
    eps,
    num_steps=20,
    cfg_scale=1.0,
    guidance_low=0.0,
    guidance_high=1.0,
    path_type="linear",
):
    """REPA's SDE sampler: `num_steps - 1` Euler-Maruyama steps on `linspace(1, 0.04, num_steps)`, then
    the noiseless mean step from 0.04 to 0. `eps[i]` is step `i`'s Gaussian draw (REPA's `randn_like`).
    """
    y_null = torch.full_like(y, null_class)
    dtype = latents.dtype
    t_steps = torch.linspace(1.0, 0.04, num_steps, dtype=torch.float64)
    t_steps = torch.cat([t_steps, torch.tensor([0.0], dtype=torch.float64)])
    x_next = latents.to(torch.float64)
    options = (cfg_scale, guidance_low, guidance_high, path_type, dtype)
    for i, (t_cur, t_next) in enumerate(zip(t_steps[:-2], t_steps[1:-1])):
        dt = t_next - t_cur
        x_cur = x_next
        diffusion = compute_diffusion(t_cur)
        eps_i = torch.as_tensor(eps[i], dtype=torch.float64)
        deps = eps_i * torch.sqrt(torch.abs(dt))
        d_cur = _sde_drift(model, x_cur, y, y_null, t_cur, *options)
        x_next = x_cur + d_cur * dt + torch.sqrt(diffusion) * deps
    # last step
    t_cur, t_next = t_steps[-2], t_steps[-1]
    dt = t_next - t_cur
    x_cur = x_next
    d_cur = _sde_drift(model, x_cur, y, y_null, t_cur, *options)
    return x_cur + dt * d_cur
