"""Official checkpoints: export/import round trips, the official layout, numerics against an
independent PyTorch re-implementation of the official network, and safe loading of .pt files."""

import argparse
import math
import pickle
import zipfile

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import keras_sit
from keras_sit.convert import export_official_state_dict, import_official_checkpoint
from keras_sit.convert.checkpoints import read_checkpoint
from tests.conftest import to_numpy

# --- An independent PyTorch SiT, written from the official `models.py`, NCHW, official key names ---


def sincos_table(dim, side):
    """Official 2-D table: token r * side + c gets [sin|cos](c) then [sin|cos](r), float64."""

    def one_axis(d, positions):
        omega = 1.0 / 10000 ** (np.arange(d // 2) / (d / 2))
        angles = positions[:, None] * omega[None]
        return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)

    rows, cols = np.divmod(np.arange(side * side, dtype=np.float64), side)
    return np.concatenate([one_axis(dim // 2, cols), one_axis(dim // 2, rows)], axis=1)


def _sequential_linear(fan_in, fan_out):
    return nn.Sequential(nn.SiLU(), nn.Linear(fan_in, fan_out))


class TorchBlock(nn.Module):
    def __init__(self, hidden, heads):
        super().__init__()
        self.heads = heads
        self.attn = nn.Module()
        self.attn.qkv, self.attn.proj = nn.Linear(hidden, 3 * hidden), nn.Linear(hidden, hidden)
        self.mlp = nn.Module()
        self.mlp.fc1, self.mlp.fc2 = nn.Linear(hidden, 4 * hidden), nn.Linear(4 * hidden, hidden)
        self.adaLN_modulation = _sequential_linear(hidden, 6 * hidden)

    def attention(self, x):
        n, t, d = x.shape
        qkv = self.attn.qkv(x).reshape(n, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        weights = ((q @ k.transpose(-2, -1)) * (d // self.heads) ** -0.5).softmax(dim=-1)
        return self.attn.proj((weights @ v).transpose(1, 2).reshape(n, t, d))

    def forward(self, x, c):
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.adaLN_modulation(c).chunk(6, dim=1)
        h = F.layer_norm(x, x.shape[-1:], eps=1e-6) * (1 + scale_msa[:, None]) + shift_msa[:, None]
        x = x + gate_msa[:, None] * self.attention(h)
        h = F.layer_norm(x, x.shape[-1:], eps=1e-6) * (1 + scale_mlp[:, None]) + shift_mlp[:, None]
        return x + gate_mlp[:, None] * self.mlp.fc2(F.gelu(self.mlp.fc1(h), approximate="tanh"))


class TorchSiT(nn.Module):
    def __init__(self, size, patch, channels, hidden, depth, heads, classes=None, null=True, learn_sigma=True):
        super().__init__()
        self.patch, self.channels, self.learn_sigma = patch, channels, learn_sigma
        side = size // patch
        self.pos_embed = nn.Parameter(torch.from_numpy(sincos_table(hidden, side)[None]).float(), requires_grad=False)
        self.x_embedder = nn.Module()
        self.x_embedder.proj = nn.Conv2d(channels, hidden, patch, stride=patch)
        self.t_embedder = nn.Module()
        self.t_embedder.mlp = nn.Sequential(nn.Linear(256, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.y_embedder = None
        if classes is not None:
            self.y_embedder = nn.Module()
            self.y_embedder.embedding_table = nn.Embedding(classes + int(null), hidden)
        self.blocks = nn.ModuleList([TorchBlock(hidden, heads) for _ in range(depth)])
        self.final_layer = nn.Module()
        out_channels = 2 * channels if learn_sigma else channels
        self.final_layer.linear = nn.Linear(hidden, patch * patch * out_channels)
        self.final_layer.adaLN_modulation = _sequential_linear(hidden, 2 * hidden)

    def forward(self, x, t, y=None):
        n, _, size, _ = x.shape
        x = self.x_embedder.proj(x).flatten(2).transpose(1, 2) + self.pos_embed
        freqs = torch.exp(-math.log(10000) * torch.arange(128, dtype=x.dtype) / 128)
        angles = t[:, None].to(x.dtype) * freqs[None]
        c = self.t_embedder.mlp(torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1))
        if y is not None:
            c = c + self.y_embedder.embedding_table(y)
        for block in self.blocks:
            x = block(x, c)
        shift, scale = self.final_layer.adaLN_modulation(c).chunk(2, dim=1)
        x = self.final_layer.linear(F.layer_norm(x, x.shape[-1:], eps=1e-6) * (1 + scale[:, None]) + shift[:, None])
        p, side = self.patch, size // self.patch
        x = x.reshape(n, side, side, p, p, -1)
        x = torch.einsum("nhwpqc->nchpwq", x).reshape(n, -1, side * p, side * p)
        return x[:, : self.channels] if self.learn_sigma else x


def random_torch_sit(seed, **config):
    torch.manual_seed(seed)
    net = TorchSiT(**config)
    with torch.no_grad():
        for name, parameter in net.named_parameters():  # outputs of order one
            if name != "pos_embed":
                parameter.normal_(0.0, parameter.shape[-1] ** -0.5 if parameter.ndim == 2 else 0.3)
    return net


CONDITIONAL = dict(size=8, patch=2, channels=3, hidden=32, depth=2, heads=4, classes=5, learn_sigma=True)
UNCONDITIONAL = dict(size=8, patch=4, channels=2, hidden=16, depth=1, heads=2, classes=None, learn_sigma=False)


def numpy_state(net):
    return {key: value.detach().numpy() for key, value in net.state_dict().items()}


# --- Tests ---


def randomized_sit(rng, **config):
    model = keras_sit.SiT(**config)
    for variable in model.backbone.trainable_weights:
        variable.assign(rng.normal(0, 0.2, size=variable.shape).astype("float32"))
    return model


def config_without_name(model):
    return {k: v for k, v in model.get_config().items() if k != "name"}


@pytest.mark.parametrize(
    "config",
    [
        dict(
            input_shape=(8, 8, 3), patch_size=2, hidden_size=32, depth=2, num_heads=4, num_classes=5, learn_sigma=True
        ),
        dict(input_shape=(4, 4, 1), patch_size=2, hidden_size=16, depth=1, num_heads=2),
    ],
)
def test_export_import_round_trip_is_exact(rng, config):
    model = randomized_sit(rng, **config, time_embedding_scale=1, seed=3, time_convention="official")
    state = export_official_state_dict(model)
    back = import_official_checkpoint(state, num_heads=config["num_heads"], seed=3)
    assert config_without_name(back) == config_without_name(model)
    assert len(back.backbone.weights) == len(model.backbone.weights)
    for ours, theirs in zip(model.backbone.weights, back.backbone.weights):
        np.testing.assert_array_equal(to_numpy(ours), to_numpy(theirs), err_msg=ours.path)
    again = export_official_state_dict(back)
    assert list(again) == list(state)
    for key in state:
        np.testing.assert_array_equal(again[key], state[key], err_msg=key)


def test_exported_keys_shapes_and_order_are_official(rng):
    d, depth, p, c, tokens, classes = 32, 2, 2, 3, 16, 5
    model = randomized_sit(
        rng,
        input_shape=(8, 8, c),
        patch_size=p,
        hidden_size=d,
        depth=depth,
        num_heads=4,
        num_classes=classes,
        learn_sigma=True,
        seed=0,
    )
    state = export_official_state_dict(model)
    expected = {
        "pos_embed": (1, tokens, d),
        "x_embedder.proj.weight": (d, c, p, p),
        "x_embedder.proj.bias": (d,),
        "t_embedder.mlp.0.weight": (d, 256),
        "t_embedder.mlp.0.bias": (d,),
        "t_embedder.mlp.2.weight": (d, d),
        "t_embedder.mlp.2.bias": (d,),
        "y_embedder.embedding_table.weight": (classes + 1, d),
        "final_layer.linear.weight": (p * p * 2 * c, d),
        "final_layer.linear.bias": (p * p * 2 * c,),
        "final_layer.adaLN_modulation.1.weight": (2 * d, d),
        "final_layer.adaLN_modulation.1.bias": (2 * d,),
    }
    for i in range(depth):
        for name, rows in [("attn.qkv", 3 * d), ("attn.proj", d), ("mlp.fc1", 4 * d), ("adaLN_modulation.1", 6 * d)]:
            expected[f"blocks.{i}.{name}.weight"], expected[f"blocks.{i}.{name}.bias"] = (rows, d), (rows,)
        expected[f"blocks.{i}.mlp.fc2.weight"], expected[f"blocks.{i}.mlp.fc2.bias"] = (d, 4 * d), (d,)
    assert len(state) == 12 + 10 * depth
    assert {k: v.shape for k, v in state.items()} == expected
    assert all(v.dtype == np.float32 for v in state.values())
    # PyTorch's order and shapes: those of the independent re-implementation's state_dict.
    reference = TorchSiT(**CONDITIONAL).state_dict()
    assert list(state) == list(reference)
    assert all(tuple(reference[k].shape) == state[k].shape for k in state)
    np.testing.assert_allclose(state["pos_embed"][0], sincos_table(d, 4), atol=1e-7)  # our table is the official one


def test_official_width_gives_official_heads(rng):
    """Heads are not in a state dict; an official width (384 here, SiT-S) implies them."""
    model = randomized_sit(rng, input_shape=(4, 4, 1), patch_size=2, hidden_size=384, depth=1, num_heads=6, seed=0)
    assert import_official_checkpoint(export_official_state_dict(model)).backbone.num_heads == 6


def test_unconditional_export_has_no_label_table(rng):
    model = randomized_sit(rng, input_shape=(4, 4, 1), patch_size=2, hidden_size=16, depth=1, num_heads=2, seed=0)
    state = export_official_state_dict(model)
    assert len(state) == 11 + 10 and not any(k.startswith("y_embedder") for k in state)


@pytest.mark.parametrize(
    "config, overrides",
    [
        (CONDITIONAL, {}),
        (CONDITIONAL, {"learn_sigma": False}),  # the sigma rows dropped on import
        ({**CONDITIONAL, "null": False, "learn_sigma": False}, {"num_classes": 5}),  # no null row
        (UNCONDITIONAL, {}),
    ],
)
def test_imported_backbone_matches_the_official_network(config, overrides):
    net = random_torch_sit(0, **config).double()  # float64 reference
    model = import_official_checkpoint(net.state_dict(), num_heads=config["heads"], seed=0, **overrides)
    backbone = model.backbone
    assert backbone.time_embedding_scale == 1 and backbone.num_classes == config["classes"]
    assert backbone.null_class == (config["classes"] if config["classes"] and config.get("null", True) else None)

    rng = np.random.default_rng(1)
    x = rng.normal(size=(3, config["channels"], config["size"], config["size"]))
    t = rng.uniform(size=3)
    inputs = {"x_t": x.transpose(0, 2, 3, 1).astype("float32"), "t": t.astype("float32")}
    labels = None
    if config["classes"]:
        labels = np.array([0, config["classes"] - 1, 2])
        inputs["labels"] = labels.astype("int32")
    with torch.no_grad():
        expected = net(torch.from_numpy(x), torch.from_numpy(t), None if labels is None else torch.from_numpy(labels))
    expected = expected.numpy().transpose(0, 2, 3, 1)
    assert np.abs(expected).max() > 0.1  # a real test, not zeros against zeros
    np.testing.assert_allclose(to_numpy(backbone(inputs)), expected, rtol=1e-4, atol=1e-4)
    # In keras_sit's time tau = 1 - t the model's velocity is the official output negated.
    velocity = model.velocity(inputs["x_t"], (1.0 - t).astype("float32"), inputs.get("labels"))
    np.testing.assert_allclose(to_numpy(velocity), -expected, rtol=1e-4, atol=1e-4)


class Payload:
    """Unpickling this would run `_touch`: a checkpoint must never do that."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (_touch, (self.path,))


def _touch(path):
    open(path, "w").close()


def test_train_checkpoint_loads_ema_and_pickled_code_is_refused(tmp_path):
    model_state = random_torch_sit(0, **CONDITIONAL).state_dict()
    ema_state = random_torch_sit(1, **CONDITIONAL).state_dict()
    path = tmp_path / "0050000.pt"
    torch.save({"model": model_state, "ema": ema_state, "opt": {}, "args": argparse.Namespace(model="SiT-S/2")}, path)
    exported = export_official_state_dict(import_official_checkpoint(path, num_heads=4))
    for key, value in ema_state.items():
        np.testing.assert_array_equal(exported[key], value.numpy(), err_msg=key)

    bare = tmp_path / "bare.pt"
    torch.save(model_state, bare)
    exported = export_official_state_dict(import_official_checkpoint(str(bare), input_channels=3, num_heads=4))
    np.testing.assert_array_equal(exported["blocks.1.mlp.fc2.weight"], model_state["blocks.1.mlp.fc2.weight"].numpy())

    marker = tmp_path / "executed"
    evil = tmp_path / "evil.pt"
    torch.save({"model": model_state, "extra": Payload(marker)}, evil)
    with pytest.raises(ValueError, match="Refused"):
        import_official_checkpoint(evil, num_heads=4)
    assert not marker.exists()
    torch.load(evil, weights_only=False)  # the payload is live: plain unpickling would have run it
    assert marker.exists()


def test_bad_checkpoints_and_arguments():
    state = numpy_state(random_torch_sit(0, **CONDITIONAL))
    with pytest.raises(ValueError, match="num_heads"):  # width 32 is no official width
        import_official_checkpoint(state)
    with pytest.raises(ValueError, match="num_classes"):
        import_official_checkpoint(state, num_heads=4, num_classes=7)
    with pytest.raises(ValueError, match="class_dropout_prob"):
        import_official_checkpoint(state, num_heads=4, num_classes=6, class_dropout_prob=0.1)
    with pytest.raises(ValueError, match="hidden_size"):
        import_official_checkpoint(state, num_heads=4, hidden_size=64)
    with pytest.raises(ValueError, match="input_channels"):
        import_official_checkpoint(state, input_channels=4, num_heads=4)
    with pytest.raises(ValueError, match="time_embedding_scale"):
        import_official_checkpoint(state, num_heads=4, time_embedding_scale=1000)
    with pytest.raises(ValueError, match="blocks.1.mlp.fc2.bias"):
        import_official_checkpoint({k: v for k, v in state.items() if k != "blocks.1.mlp.fc2.bias"}, num_heads=4)
    with pytest.raises(ValueError, match="pos_embed"):
        import_official_checkpoint({k: v for k, v in state.items() if k != "pos_embed"}, num_heads=4)
    with pytest.raises(TypeError, match="source"):
        import_official_checkpoint([1, 2], num_heads=4)
    vectors = keras_sit.SiT(input_dim=8, patch_size=2, hidden_size=16, depth=1, num_heads=2, seed=0)
    with pytest.raises(ValueError, match="input_dim"):
        export_official_state_dict(vectors)
    with pytest.raises(TypeError, match="sit"):
        export_official_state_dict(state)


def test_files_that_are_not_checkpoints_are_named(tmp_path):
    for name, kind in (("sit.pt", "not a PyTorch checkpoint"), ("vae.safetensors", "not a safetensors file")):
        (tmp_path / name).write_bytes(b"hello world, not a checkpoint")
        with pytest.raises(ValueError, match=kind):
            read_checkpoint(tmp_path / name)
    with pytest.raises(ValueError, match="not a PyTorch checkpoint"):
        import_official_checkpoint(str(tmp_path / "sit.pt"))
    with pytest.raises(FileNotFoundError, match="No checkpoint file"):
        read_checkpoint(tmp_path / "missing.pt")


@pytest.mark.parametrize("suffix", [".pt", ".pth", ".ckpt", ".bin"])
def test_random_bytes_are_not_a_checkpoint_rather_than_code(tmp_path, suffix):
    # torch's weights-only unpickler fails on them as on a forbidden class ("Weights only load failed").
    for seed in range(8):
        path = tmp_path / f"random-{seed}{suffix}"
        path.write_bytes(np.random.default_rng(seed).bytes(4096))
        with pytest.raises(ValueError, match="is not a PyTorch checkpoint") as caught:
            read_checkpoint(path)
        assert "could run code" not in str(caught.value)
    with zipfile.ZipFile(tmp_path / f"archive{suffix}", "w") as archive:  # a zip, but no torch archive
        archive.writestr("archive/data.pkl", np.random.default_rng(0).bytes(1000))
    with pytest.raises(ValueError, match="is not a PyTorch checkpoint"):
        read_checkpoint(tmp_path / f"archive{suffix}")


class Config:
    """A plain class: not code by itself, but unpickling it imports and builds whatever the file names."""

    def __init__(self, value):
        self.value = value


def test_pickles_of_other_classes_could_run_code(tmp_path):
    tensors = {"w": torch.zeros(2)}
    cases = {
        "namespace.pt": lambda path: torch.save({**tensors, "args": argparse.Namespace(model="SiT-S/2")}, path),
        "class.pth": lambda path: torch.save({**tensors, "config": Config(3)}, path),
        "legacy.ckpt": lambda path: torch.save(
            {**tensors, "config": Config(3)}, path, _use_new_zipfile_serialization=False
        ),
        "plain.pt": lambda path: path.write_bytes(
            pickle.dumps({"payload": Payload(tmp_path / "executed")}, protocol=4)
        ),
    }
    for name, save in cases.items():
        save(tmp_path / name)
        with pytest.raises(ValueError, match="could run code"):
            read_checkpoint(tmp_path / name)
    assert not (tmp_path / "executed").exists()
    assert read_checkpoint(tmp_path / "namespace.pt", allowed_globals=[argparse.Namespace])["args"].model == "SiT-S/2"
