"""The same SiT written in plain PyTorch, eager: the yardstick keras_sit is to beat.

    python -m benchmarks.benchmark --backends torch,plain-torch     # both rows of the full benchmark
    python -m benchmarks.benchmark --mode alternate                 # a step of each in turn, one process

Not run alone. It is the network of a preset at the same size and FLOP
count (patch embedding, sin-cos positions, timestep and label embeddings,
adaLN-Zero blocks with `scaled_dot_product_attention` and a tanh GELU, adaLN
final layer), trained with the same objective (uniform t, label dropout,
linear path, velocity MSE) and the same AdamW, in float32 as the official
code trains, and it samples with Euler steps. It is not a second
implementation of the library, just the figure to measure keras_sit against
(the anchor of every precision's ratio), written as directly as PyTorch allows.
"""

import math

import torch
from torch import nn
from torch.nn import functional as F


def modulate(x, shift, scale):
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


class Block(nn.Module):
    def __init__(self, hidden_size, num_heads, mlp_hidden_size):
        super().__init__()
        self.num_heads = num_heads
        self.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.qkv = nn.Linear(hidden_size, 3 * hidden_size)
        self.proj = nn.Linear(hidden_size, hidden_size)
        self.norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.fc1 = nn.Linear(hidden_size, mlp_hidden_size)
        self.fc2 = nn.Linear(mlp_hidden_size, hidden_size)
        self.adaLN_modulation = nn.Linear(hidden_size, 6 * hidden_size)

    def forward(self, x, c):
        modulation = self.adaLN_modulation(F.silu(c)).chunk(6, dim=1)
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = modulation
        batch, tokens, hidden = x.shape
        qkv = self.qkv(modulate(self.norm1(x), shift_msa, scale_msa))
        q, k, v = qkv.reshape(batch, tokens, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        attention = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(batch, tokens, hidden)
        x = x + gate_msa.unsqueeze(1) * self.proj(attention)
        h = self.fc1(modulate(self.norm2(x), shift_mlp, scale_mlp))
        return x + gate_mlp.unsqueeze(1) * self.fc2(F.gelu(h, approximate="tanh"))


class PlainSiT(nn.Module):
    def __init__(self, input_shape, patch_size, hidden_size, depth, num_heads, num_classes, mlp_ratio=4.0, **_):
        super().__init__()
        height, width, self.channels = input_shape
        self.patch_size, self.grid = patch_size, (height // patch_size, width // patch_size)
        self.patch_embed = nn.Conv2d(self.channels, hidden_size, patch_size, patch_size)
        self.register_buffer("pos_embed", torch.zeros(1, self.grid[0] * self.grid[1], hidden_size))
        self.t_mlp = nn.Sequential(nn.Linear(256, hidden_size), nn.SiLU(), nn.Linear(hidden_size, hidden_size))
        self.y_embedder = nn.Embedding(num_classes + 1, hidden_size)
        self.blocks = nn.ModuleList(Block(hidden_size, num_heads, int(hidden_size * mlp_ratio)) for _ in range(depth))
        self.norm_final = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.adaLN_final = nn.Linear(hidden_size, 2 * hidden_size)
        self.linear = nn.Linear(hidden_size, patch_size * patch_size * self.channels)

    def forward(self, x, t, y):  # x: [B, C, H, W], as PyTorch convolutions want
        x = self.patch_embed(x).flatten(2).transpose(1, 2) + self.pos_embed
        freqs = torch.exp(-math.log(10000.0) * torch.arange(128, dtype=torch.float32, device=x.device) / 128)
        angles = 1000.0 * t[:, None] * freqs[None]
        c = self.t_mlp(torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)) + self.y_embedder(y)
        for block in self.blocks:
            x = block(x, c)
        shift, scale = self.adaLN_final(F.silu(c)).chunk(2, dim=1)
        x = self.linear(modulate(self.norm_final(x), shift, scale))
        (rows, cols), p = self.grid, self.patch_size
        x = x.reshape(-1, rows, cols, p, p, self.channels).permute(0, 5, 1, 3, 2, 4)
        return x.reshape(-1, self.channels, rows * p, cols * p)


class PlainTorchTrainer:
    """`train_on_batch(x, labels)` and `count_params()`, as the benchmark asks of a Keras model."""

    def __init__(self, config, class_dropout_prob=0.1, seed=0):
        torch.manual_seed(seed)
        self.config = config
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.network = PlainSiT(**config).to(self.device)
        self.num_classes, self.class_dropout_prob = config["num_classes"], class_dropout_prob
        self.optimizer = torch.optim.AdamW(self.network.parameters(), lr=1e-4, weight_decay=0.0)

    @classmethod
    def from_preset(cls, name, **overrides):
        from keras_sit.presets import preset_config

        return cls(preset_config(name, **overrides))

    def count_params(self):
        return sum(p.numel() for p in self.network.parameters())

    def generate(self, num_samples, labels, num_steps, seed=0, cfg_scale=1.0, sampler="euler", verbose=0):
        """Euler from noise at t=1 to data at t=0 (keras_sit's time), as the official Euler ODE steps."""
        if sampler != "euler" or cfg_scale != 1.0:
            raise SystemExit("plain torch samples with --sampler euler and --cfg-scale 1 only")
        generator = torch.Generator(self.device).manual_seed(seed)
        height, width, channels = self.config["input_shape"]
        x = torch.randn(num_samples, channels, height, width, generator=generator, device=self.device)
        labels = torch.as_tensor(labels, device=self.device).long()
        times = torch.linspace(1.0, 0.0, num_steps + 1, device=self.device)
        with torch.no_grad():
            for t, t_next in zip(times[:-1], times[1:], strict=True):
                x = x + (t_next - t) * self.network(x, t.expand(num_samples), labels)
        return x.permute(0, 2, 3, 1).cpu().numpy()

    def train_on_batch(self, x, labels):
        x = torch.as_tensor(x, device=self.device).permute(0, 3, 1, 2)
        labels = torch.as_tensor(labels, device=self.device).long()
        batch = x.shape[0]
        labels = torch.where(torch.rand(batch, device=self.device) < self.class_dropout_prob, self.num_classes, labels)
        t = torch.rand(batch, device=self.device)
        noise = torch.randn_like(x)
        tt = t[:, None, None, None]
        loss = ((self.network((1 - tt) * x + tt * noise, t, labels) - (noise - x)) ** 2).mean()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return loss.item()
