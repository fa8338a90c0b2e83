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


# --- REPA's SiT network (`models/sit.py`), float64, in REPA's exact key layout -------------------
# Written from REPA's source without timm: timm's `Attention` (fused `qkv`, optional LayerNorm q/k
# norms over the head dimension, `proj`), `Mlp` (`fc1`, tanh GELU, `fc2`) and `PatchEmbed` (a
# stride-p `proj` convolution, tokens in row-major order) are spelt out with their parameter names,
# so `load_state_dict(strict=True)` checks a file's keys and shapes as REPA's model would.


def modulate_repa(x, shift, scale):
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


class TimmAttention(torch.nn.Module):
    def __init__(self, dim, num_heads, qk_norm):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.scale = self.head_dim**-0.5
        self.qkv = torch.nn.Linear(dim, dim * 3, bias=True)
        self.q_norm = torch.nn.LayerNorm(self.head_dim) if qk_norm else torch.nn.Identity()
        self.k_norm = torch.nn.LayerNorm(self.head_dim) if qk_norm else torch.nn.Identity()
        self.proj = torch.nn.Linear(dim, dim)

    def forward(self, x):
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)
        attn = ((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1)
        x = (attn @ v).transpose(1, 2).reshape(B, N, C)
        return self.proj(x)


class TimmMlp(torch.nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1, self.fc2 = torch.nn.Linear(dim, hidden), torch.nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class RepaBlock(torch.nn.Module):
    def __init__(self, hidden_size, num_heads, mlp_ratio, qk_norm):
        super().__init__()
        self.norm1 = torch.nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.attn = TimmAttention(hidden_size, num_heads, qk_norm)
        self.norm2 = torch.nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.mlp = TimmMlp(hidden_size, int(hidden_size * mlp_ratio))
        self.adaLN_modulation = torch.nn.Sequential(torch.nn.SiLU(), torch.nn.Linear(hidden_size, 6 * hidden_size))

    def forward(self, x, c):
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.adaLN_modulation(c).chunk(6, dim=-1)
        x = x + gate_msa.unsqueeze(1) * self.attn(modulate_repa(self.norm1(x), shift_msa, scale_msa))
        return x + gate_mlp.unsqueeze(1) * self.mlp(modulate_repa(self.norm2(x), shift_mlp, scale_mlp))


class RepaPatchEmbed(torch.nn.Module):
    def __init__(self, patch_size, in_channels, hidden_size):
        super().__init__()
        self.proj = torch.nn.Conv2d(in_channels, hidden_size, kernel_size=patch_size, stride=patch_size)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)


class RepaTimestepEmbedder(torch.nn.Module):
    def __init__(self, hidden_size, frequency_embedding_size=256):
        super().__init__()
        self.mlp = torch.nn.Sequential(
            torch.nn.Linear(frequency_embedding_size, hidden_size),
            torch.nn.SiLU(),
            torch.nn.Linear(hidden_size, hidden_size),
        )
        self.frequency_embedding_size = frequency_embedding_size

    def forward(self, t):
        half = self.frequency_embedding_size // 2
        freqs = torch.exp(-math.log(10000) * torch.arange(start=0, end=half, dtype=torch.float32) / half)
        args = t[:, None].float() * freqs[None]
        embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1).to(t.dtype)
        return self.mlp(embedding)


class RepaLabelEmbedder(torch.nn.Module):
    def __init__(self, num_classes, hidden_size):
        super().__init__()
        self.embedding_table = torch.nn.Embedding(num_classes + 1, hidden_size)  # the null row (dropout 0.1)

    def forward(self, labels):
        return self.embedding_table(labels)


class RepaFinalLayer(torch.nn.Module):
    def __init__(self, hidden_size, patch_size, out_channels):
        super().__init__()
        self.norm_final = torch.nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.linear = torch.nn.Linear(hidden_size, patch_size * patch_size * out_channels)
        self.adaLN_modulation = torch.nn.Sequential(torch.nn.SiLU(), torch.nn.Linear(hidden_size, 2 * hidden_size))

    def forward(self, x, c):
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=-1)
        return self.linear(modulate_repa(self.norm_final(x), shift, scale))


class RepaSiT(torch.nn.Module):
    """REPA's `SiT` (`models/sit.py`): `forward(x_nchw, t, y) -> (x_nchw, zs)`, zs the projected tokens."""

    def __init__(
        self, input_size, patch_size, in_channels, hidden_size, depth, num_heads, num_classes,
        encoder_depth, z_dims, projector_dim, mlp_ratio=4.0, qk_norm=False,
    ):  # fmt: skip
        super().__init__()
        self.in_channels, self.patch_size, self.encoder_depth = in_channels, patch_size, encoder_depth
        self.x_embedder = RepaPatchEmbed(patch_size, in_channels, hidden_size)
        self.t_embedder = RepaTimestepEmbedder(hidden_size)
        self.y_embedder = RepaLabelEmbedder(num_classes, hidden_size)
        num_patches = (input_size // patch_size) ** 2
        self.pos_embed = torch.nn.Parameter(torch.zeros(1, num_patches, hidden_size), requires_grad=False)
        self.blocks = torch.nn.ModuleList([RepaBlock(hidden_size, num_heads, mlp_ratio, qk_norm) for _ in range(depth)])
        self.projectors = torch.nn.ModuleList(
            [
                torch.nn.Sequential(
                    torch.nn.Linear(hidden_size, projector_dim),
                    torch.nn.SiLU(),
                    torch.nn.Linear(projector_dim, projector_dim),
                    torch.nn.SiLU(),
                    torch.nn.Linear(projector_dim, z_dim),
                )  # fmt: skip
                for z_dim in z_dims
            ]
        )
        self.final_layer = RepaFinalLayer(hidden_size, patch_size, in_channels)

    def unpatchify(self, x):
        c, p = self.in_channels, self.patch_size
        h = w = int(x.shape[1] ** 0.5)
        x = x.reshape(shape=(x.shape[0], h, w, p, p, c))
        x = torch.einsum("nhwpqc->nchpwq", x)
        return x.reshape(shape=(x.shape[0], c, h * p, w * p))

    def forward(self, x, t, y):
        x = self.x_embedder(x) + self.pos_embed
        N, T, D = x.shape
        c = self.t_embedder(t) + self.y_embedder(y)
        zs = None
        for i, block in enumerate(self.blocks):
            x = block(x, c)
            if (i + 1) == self.encoder_depth:
                zs = [projector(x.reshape(-1, D)).reshape(N, T, -1) for projector in self.projectors]
        return self.unpatchify(self.final_layer(x, c)), zs


def random_repa_model(seed=0, **config):
    """A `RepaSiT` (float64) with every weight random (none zero, unlike REPA's initialisation)."""
    torch.manual_seed(seed)
    model = RepaSiT(**config).double()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name == "pos_embed":
                side = int(math.isqrt(parameter.shape[1]))
                table = torch.from_numpy(reference_sincos(parameter.shape[2], side))[None]
                parameter.copy_(table + 0.1 * torch.randn_like(table))  # perturbed: checks the token order
            elif name.endswith("norm.weight"):
                parameter.copy_(1.0 + 0.2 * torch.randn_like(parameter))
            else:
                parameter.copy_(torch.randn_like(parameter) / math.sqrt(max(parameter.shape[-1], 1)) * 0.7)
    return model


def reference_sincos(embed_dim, grid_size):
    """MAE's `get_2d_sincos_pos_embed` (what REPA's SiT fills `pos_embed` with)."""
    grid = np.stack(np.meshgrid(np.arange(grid_size, dtype=np.float32), np.arange(grid_size, dtype=np.float32)))

    def one_d(dim, pos):
        omega = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    return np.concatenate([one_d(embed_dim // 2, grid[0]), one_d(embed_dim // 2, grid[1])], axis=1)


def legacy_layout(state, encoder_depth):
    """REPA's first layout: `blocks.{encoder_depth + i}` saved as `decoder_blocks.{i}`."""
    renamed = {}
    for key, value in state.items():
        parts = key.split(".")
        if parts[0] == "blocks" and int(parts[1]) >= encoder_depth:
            key = ".".join(["decoder_blocks", str(int(parts[1]) - encoder_depth), *parts[2:]])
        renamed[key] = value
    return renamed
