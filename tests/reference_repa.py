"""REPA's training loss in PyTorch (float64), written from its `loss.py` (`SILoss`), `models/sit.py`
(`build_mlp`, the projected tokens of block `encoder_depth`) and `train.py` (the total), and iREPA's
convolution projector and `spatial_zscore`, to check `RepresentationAlignment` against.

`t` and the noise are given instead of drawn; the SiT is the NumPy reference (`tests/reference.py`)
with the Keras model's weights; REPA, like keras_sit, puts the data at t=0 and the noise at t=1, so
its `time_input` is keras_sit's `t` unchanged.
"""

import math

import numpy as np
import torch
import torch.nn.functional as F

from tests import reference


def mean_flat(x):
    return torch.mean(x, dim=list(range(1, len(x.size()))))


def linear(keras_dense):
    kernel, bias = (np.asarray(w, "float64") for w in keras_dense.get_weights())
    layer = torch.nn.Linear(*kernel.shape).double()
    layer.weight.data = torch.from_numpy(kernel.T.copy())
    layer.bias.data = torch.from_numpy(bias)
    return layer


def build_mlp(keras_sequential):
    """REPA's projector: Linear -> SiLU -> Linear -> SiLU -> Linear, with the Keras projector's weights."""
    first, second, third = keras_sequential.layers
    return torch.nn.Sequential(linear(first), torch.nn.SiLU(), linear(second), torch.nn.SiLU(), linear(third))


def build_conv(keras_conv):
    """iREPA's projector: `nn.Conv2d(D, C, 3, padding=1)` on the `[B, D, H, W]` token grid."""
    kernel, bias = (np.asarray(w, "float64") for w in keras_conv.get_weights())  # [3, 3, D, C]
    layer = torch.nn.Conv2d(kernel.shape[2], kernel.shape[3], kernel_size=3, padding=1).double()
    layer.weight.data = torch.from_numpy(kernel.transpose(3, 2, 0, 1).copy())
    layer.bias.data = torch.from_numpy(bias)
    return layer


def project(projector, x, kind):
    """`models/sit.py`: `projector(x.reshape(-1, D)).reshape(N, T, -1)`; iREPA's conv on the square grid."""
    N, T, D = x.shape
    if kind == "mlp":
        return projector(x.reshape(-1, D)).reshape(N, T, -1)
    H = W = math.isqrt(T)
    y = projector(x.reshape(N, H, W, D).permute(0, 3, 1, 2).contiguous())
    return y.permute(0, 2, 3, 1).contiguous().reshape(N, T, -1)


def spatial_zscore(feat, alpha, eps=1e-6):
    mean = feat.mean(dim=1, keepdim=True)
    std = feat.std(dim=1, keepdim=True)
    return (feat - alpha * mean) / (std + eps)


@torch.no_grad()
def repa_loss(backbone, objective, images, time_input, noises, zs, labels=None, proj_coeff=0.5):
    """`(total, proj_loss)` as REPA's `train.py` computes them for one batch (linear path, v-prediction)."""
    images = torch.from_numpy(np.asarray(images, "float64"))
    noises = torch.from_numpy(np.asarray(noises, "float64"))
    time_input = torch.from_numpy(np.asarray(time_input, "float64")).reshape(-1, *[1] * (images.dim() - 1))
    zs = [torch.from_numpy(np.asarray(z, "float64")) for z in zs]
    if objective.spatial_normalization is not None:
        zs = [spatial_zscore(z, objective.spatial_normalization) for z in zs]
    kind = objective.projector_kind
    projectors = [build_mlp(p) if kind == "mlp" else build_conv(p) for p in objective.projectors]

    # SILoss.interpolant, linear path
    alpha_t, sigma_t, d_alpha_t, d_sigma_t = 1 - time_input, time_input, -1, 1
    model_input = alpha_t * images + sigma_t * noises
    model_target = d_alpha_t * images + d_sigma_t * noises
    output, tokens = reference.backbone(
        backbone, model_input.numpy(), time_input.flatten().numpy(), labels, token_depth=objective.depth
    )
    model_output = torch.from_numpy(output)
    zs_tilde = [project(projector, torch.from_numpy(tokens), kind) for projector in projectors]
    denoising_loss = mean_flat((model_output - model_target) ** 2)

    proj_loss = 0.0
    bsz = zs[0].shape[0]
    for z, z_tilde in zip(zs, zs_tilde):
        for z_j, z_tilde_j in zip(z, z_tilde):
            z_tilde_j = F.normalize(z_tilde_j, dim=-1)
            z_j = F.normalize(z_j, dim=-1)
            proj_loss += mean_flat(-(z_j * z_tilde_j).sum(dim=-1))
    proj_loss /= len(zs) * bsz

    loss = denoising_loss.mean() + proj_loss.mean() * proj_coeff
    return float(loss), float(proj_loss.mean())
