"""The DINOv2 teacher against transformers' `Dinov2Model` and PyTorch's interpolation.

The references are PyTorch's: transformers' `Dinov2Model` and
`Dinov2WithRegistersModel` with random weights for the network, and
`torch.nn.functional.interpolate` for the image resize (bicubic, no
antialiasing) and the position-table resampling (bicubic, antialiased: what
timm's `resample_abs_pos_embed` runs, which REPA uses).

Position tables: the installed transformers' `Dinov2Embeddings.interpolate_pos_encoding`
resamples its table on the fly when the patch grid differs from the table's,
with `F.interpolate(mode="bicubic", align_corners=False)` and no
antialiasing; REPA instead resamples DINOv2's table once with timm's
antialiased bicubic. So for the parity of the network itself `Dinov2Model`
is built with `image_size` equal to the size the teacher resizes to (its
table then has the grid the input gives and is used as it is) and the
teacher imports the same table unchanged. The resampling is tested apart
against `F.interpolate(antialias=True)`, and end to end through
`Dinov2WithRegistersModel`, whose `interpolate_pos_encoding` is that same
antialiased bicubic to the input's grid.

Tolerances: the tokens are outputs of the final LayerNorm (unit scale; the
largest are about 5), so next to `rtol=1e-4` an `atol` of 2e-5 (2e-5 of a
typical entry, about 4x the largest difference measured: 5.7e-6, ViT-B on
JAX) only covers the entries near zero, where a relative bound means
nothing. The preprocessed images are within about 2.7 of zero and are
compared to 1e-5 absolute.
"""

import json

import keras
import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from transformers import Dinov2Config, Dinov2Model, Dinov2WithRegistersConfig, Dinov2WithRegistersModel

from keras_sit.convert import import_dinov2
from keras_sit.teachers import (
    DINOV2_CONFIGS,
    DINOv2Teacher,
    antialiased_bicubic_matrix,
    bicubic_matrix,
    resample_position_embeddings,
)

RTOL, ATOL = 1e-4, 2e-5
MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
TINY = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4)


def torch_preprocess(images, resized_size):
    """REPA's `preprocess_raw_image` for DINOv2, on channels-last 0..255 images: the pixel values HF is fed."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2) / 255.0
    x = (x - MEAN) / STD
    return torch.nn.functional.interpolate(x, resized_size, mode="bicubic")


def random_images(batch, size, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (batch, size, size, 3)).astype("float32")


def randomized(model, seed):
    """`model` in eval mode with every parameter drawn at random, so no weight sits at an initial 0 or 1."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("lambda1") or ("norm" in name and name.endswith("weight")):
                parameter.copy_(1.0 + 0.1 * torch.randn_like(parameter))
            else:
                parameter.normal_(0.0, 0.05 if parameter.ndim < 2 or "embeddings." in name else 0.02)
    return model.eval()


def hf_tokens(model, images, resized_size):
    with torch.no_grad():
        hidden = model(pixel_values=torch_preprocess(images, resized_size)).last_hidden_state
    registers = getattr(model.config, "num_register_tokens", 0)
    return hidden[:, 1 + registers :].numpy()


def hub_state_dict(model):
    """The state dict of an HF DINOv2 in torch hub's names and layout (`dinov2_vitb14_pretrain.pth`)."""
    state = {key: value.detach().clone() for key, value in model.state_dict().items()}
    hub = {
        "cls_token": state.pop("embeddings.cls_token"),
        "mask_token": state.pop("embeddings.mask_token"),
        "pos_embed": state.pop("embeddings.position_embeddings"),
        "patch_embed.proj.weight": state.pop("embeddings.patch_embeddings.projection.weight"),
        "patch_embed.proj.bias": state.pop("embeddings.patch_embeddings.projection.bias"),
        "norm.weight": state.pop("layernorm.weight"),
        "norm.bias": state.pop("layernorm.bias"),
    }
    if "embeddings.register_tokens" in state:
        hub["register_tokens"] = state.pop("embeddings.register_tokens")
    for index in range(model.config.num_hidden_layers):
        hf, block = f"encoder.layer.{index}.", f"blocks.{index}."
        for kind in ("weight", "bias"):
            qkv = [state.pop(f"{hf}attention.{name}_proj.{kind}") for name in "qkv"]
            hub[f"{block}attn.qkv.{kind}"] = torch.cat(qkv)
            hub[f"{block}attn.proj.{kind}"] = state.pop(f"{hf}attention.o_proj.{kind}")
            for norm in ("norm1", "norm2"):
                hub[f"{block}{norm}.{kind}"] = state.pop(f"{hf}{norm}.{kind}")
            if model.config.use_swiglu_ffn:
                gate_value = [state.pop(f"{hf}mlp.{name}_proj.{kind}") for name in ("gate", "up")]
                hub[f"{block}mlp.w12.{kind}"] = torch.cat(gate_value)
                hub[f"{block}mlp.w3.{kind}"] = state.pop(f"{hf}mlp.down_proj.{kind}")
            else:
                for name in ("fc1", "fc2"):
                    hub[f"{block}mlp.{name}.{kind}"] = state.pop(f"{hf}mlp.{name}.{kind}")
        for number in (1, 2):
            hub[f"{block}ls{number}.gamma"] = state.pop(f"{hf}layer_scale{number}.lambda1")
    assert not state, f"unmapped keys {sorted(state)}"
    return hub


def write(model, tmp_path, layout):
    """The weights of an HF model as users get them; returns the path `import_dinov2` reads."""
    if layout == "hf_folder":  # save_pretrained: model.safetensors in the released names, and config.json
        model.save_pretrained(tmp_path / "hf")
        return tmp_path / "hf"
    if layout == "hf_safetensors":  # transformers' in-memory names (q_proj, gate_proj, ...)
        path = tmp_path / "model.safetensors"
        save_file({key: value.contiguous() for key, value in model.state_dict().items()}, str(path))
        return path
    path = tmp_path / "dinov2_pretrain.pth"
    torch.save(hub_state_dict(model), path)
    return path


def assert_tokens_close(ours, reference):
    ours = np.asarray(keras.ops.convert_to_numpy(ours))
    assert ours.shape == reference.shape
    np.testing.assert_allclose(ours, reference, rtol=RTOL, atol=ATOL)


# --- the resize and the resampling ---


@pytest.mark.parametrize("image_size,resized_size", [(256, 224), (512, 448), (32, 28), (9, 20)])
def test_preprocessing_matches_torch_bicubic(image_size, resized_size):
    images = random_images(2, image_size)
    network = dict(patch_size=1, hidden_size=8, depth=1, num_heads=1, mlp_hidden_size=8)  # only the preprocessing runs
    teacher = DINOv2Teacher(image_size, resized_size, **network)
    ours = keras.ops.convert_to_numpy(teacher.preprocessing(images))
    reference = torch_preprocess(images, resized_size).permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(ours, reference, rtol=0, atol=1e-5)


@pytest.mark.parametrize("size,new_size", [(256, 224), (300, 224), (37, 16), (5, 9)])
def test_bicubic_matrix_is_torch_interpolate(size, new_size):
    # One axis at a time: interpolating the identity gives PyTorch's weights themselves.
    identity = torch.eye(size)[None, None]
    weights = torch.nn.functional.interpolate(identity, size=(size, new_size), mode="bicubic")[0, 0].numpy().T
    np.testing.assert_allclose(bicubic_matrix(size, new_size), weights, rtol=0, atol=1e-6)
    weights = torch.nn.functional.interpolate(identity, size=(size, new_size), mode="bicubic", antialias=True)
    np.testing.assert_allclose(antialiased_bicubic_matrix(size, new_size), weights[0, 0].numpy().T, atol=1e-6)


@pytest.mark.parametrize("grid,new_grid", [(37, 16), (37, 32), (5, 2), (3, 7)])
def test_position_resampling_matches_torch_antialias(grid, new_grid):
    table = np.random.default_rng(grid).standard_normal((1, 1 + grid * grid, 16)).astype("float32")
    patches = torch.from_numpy(table[:, 1:]).reshape(1, grid, grid, 16).permute(0, 3, 1, 2)
    resized = torch.nn.functional.interpolate(patches, size=(new_grid, new_grid), mode="bicubic", antialias=True)
    reference = np.concatenate([table[:, :1], resized.permute(0, 2, 3, 1).reshape(1, -1, 16).numpy()], axis=1)
    ours = resample_position_embeddings(table, new_grid)
    assert ours.dtype == np.float32
    np.testing.assert_allclose(ours, reference, rtol=0, atol=1e-5)
    assert resample_position_embeddings(table, grid) is table  # already the grid: unchanged, as timm


# --- the network against transformers ---


@pytest.mark.parametrize("mlp", ["gelu", "swiglu"])
@pytest.mark.parametrize("layout", ["hf_folder", "hf_safetensors", "hub_pth"])
def test_tiny_matches_transformers(tmp_path, layout, mlp):
    reference = randomized(Dinov2Model(Dinov2Config(**TINY, image_size=28, use_swiglu_ffn=mlp == "swiglu")), 1)
    images = random_images(2, 32)
    # The folder's config.json gives the heads; the bare files need `num_heads`.
    num_heads = None if layout == "hf_folder" else 4
    teacher = import_dinov2(write(reference, tmp_path, layout), image_size=32, resized_size=28, num_heads=num_heads)
    assert (teacher.num_heads, teacher.mlp_type, teacher.grid_size) == (4, mlp, 2)
    assert_tokens_close(teacher(images), hf_tokens(reference, images, 28))


@pytest.mark.parametrize("layout", ["hf_folder", "hub_pth"])
def test_registers_and_position_resampling_match_transformers(tmp_path, layout):
    # A 5x5 table used on a 2x2 grid: Dinov2WithRegistersModel resamples it as timm does (antialiased bicubic);
    # the teacher resampled it at import.
    config = Dinov2WithRegistersConfig(**TINY, image_size=70, patch_size=14, num_register_tokens=4)
    reference = randomized(Dinov2WithRegistersModel(config), 2)
    images = random_images(2, 32, seed=1)
    teacher = import_dinov2(write(reference, tmp_path, layout), image_size=32, resized_size=28, num_heads=4)
    assert teacher.num_register_tokens == 4
    assert_tokens_close(teacher(images), hf_tokens(reference, images, 28))


def test_vit_b_matches_transformers(tmp_path):
    # ViT-B/14 (Dinov2Config's defaults) at REPA's 256 -> 224, read from both file layouts.
    reference = randomized(Dinov2Model(Dinov2Config(image_size=224)), 3)
    images = random_images(1, 256, seed=2)
    expected = hf_tokens(reference, images, 224)
    for layout in ("hf_safetensors", "hub_pth"):
        teacher = import_dinov2(write(reference, tmp_path, layout))
        config = {key: teacher.get_config()[key] for key in DINOV2_CONFIGS["dinov2_vitb14"]}
        assert config == DINOV2_CONFIGS["dinov2_vitb14"]
        assert (teacher.resized_size, teacher.num_patches) == (224, 256)
        assert_tokens_close(teacher(images), expected)


def test_presets_match_transformers():
    # ViT-S with a 16x16 table has the parameters of HF's (whose mask token the teacher leaves out).
    small = DINOv2Teacher.from_preset("dinov2_vits14")
    hf_small = Dinov2Model(Dinov2Config(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, image_size=224))
    assert small.count_params() == sum(p.numel() for p in hf_small.parameters()) - 384
    # ViT-g's SwiGLU width, as transformers computes it for the released config.
    giant = Dinov2Config(hidden_size=1536, num_hidden_layers=40, num_attention_heads=24, use_swiglu_ffn=True)
    from transformers.models.dinov2.modeling_dinov2 import Dinov2SwiGLUFFN

    assert Dinov2SwiGLUFFN(giant).down_proj.in_features == DINOV2_CONFIGS["dinov2_vitg14"]["mlp_hidden_size"]
    released = {"s": (384, 12, 6), "b": (768, 12, 12), "l": (1024, 24, 16), "g": (1536, 40, 24)}
    for size, (width, depth, heads) in released.items():
        for name in (f"dinov2_vit{size}14", f"dinov2_vit{size}14_reg"):
            config = DINOV2_CONFIGS[name]
            assert (config["hidden_size"], config["depth"], config["num_heads"]) == (width, depth, heads)
            assert config["num_register_tokens"] == (4 if name.endswith("_reg") else 0)


# --- the model ---


def tiny_teacher(tmp_path):
    reference = randomized(Dinov2Model(Dinov2Config(**TINY, image_size=28)), 4)
    return import_dinov2(write(reference, tmp_path, "hf_folder"), image_size=32, resized_size=28)


def test_save_and_load_give_the_same_tokens(tmp_path):
    teacher = tiny_teacher(tmp_path)
    images = random_images(3, 32, seed=3)
    path = tmp_path / "teacher.keras"
    teacher.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    assert isinstance(loaded, DINOv2Teacher)
    assert loaded.get_config() == teacher.get_config()
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(loaded(images)), keras.ops.convert_to_numpy(teacher(images))
    )
    assert not loaded.trainable and not loaded.trainable_weights
    chunks = loaded.features(images, batch_size=2)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(chunks), keras.ops.convert_to_numpy(teacher(images)), rtol=1e-6, atol=1e-6
    )


def test_frozen_by_default(tmp_path):
    teacher = tiny_teacher(tmp_path)
    assert teacher.trainable is False
    assert teacher.trainable_weights == []
    assert len(teacher.non_trainable_weights) == len(teacher.weights) > 0
    fresh = DINOv2Teacher(32, 28, hidden_size=64, depth=1, num_heads=4, mlp_hidden_size=64)
    assert fresh.trainable_weights == []
    tunable = DINOv2Teacher(32, 28, hidden_size=64, depth=1, num_heads=4, mlp_hidden_size=64, trainable=True)
    assert len(tunable.trainable_weights) == len(tunable.weights)


def test_mixed_precision_returns_float32_tokens(tmp_path):
    reference = randomized(Dinov2Model(Dinov2Config(**TINY, image_size=28)), 6)
    images = random_images(2, 32, seed=4)
    teacher = import_dinov2(write(reference, tmp_path, "hub_pth"), 32, 28, num_heads=4, dtype="mixed_bfloat16")
    tokens = np.asarray(keras.ops.convert_to_numpy(teacher(images)))
    expected = hf_tokens(reference, images, 28)
    assert tokens.dtype == np.float32
    # bfloat16 keeps 8 bits of mantissa: a few 1e-3 relative per op, over two blocks.
    assert np.linalg.norm(tokens - expected) / np.linalg.norm(expected) < 3e-2


def test_seeded_initialization():
    first, second = (DINOv2Teacher(32, 28, seed=7, **SMALL) for _ in range(2))
    for a, b in zip(first.weights, second.weights):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b))
    kernel = keras.ops.convert_to_numpy(first.blocks[0].attn.qkv.kernel)
    assert abs(kernel.std() - 0.02) < 2e-3  # DINOv2's N(0, 0.02) for the Linear layers
    assert np.all(keras.ops.convert_to_numpy(first.blocks[0].ls1.gamma) == 1.0)


def test_repa_resized_size_default():
    teacher = DINOv2Teacher(512, hidden_size=64, depth=1, num_heads=4, mlp_hidden_size=64)
    assert (teacher.resized_size, teacher.grid_size) == (448, 32)
    assert tuple(teacher.compute_output_shape((2, 512, 512, 3))) == (2, 1024, 64)


# --- bad inputs ---

SMALL = dict(hidden_size=64, depth=1, num_heads=4, mlp_hidden_size=64)


@pytest.mark.parametrize(
    "arguments,message",
    [
        (dict(image_size=64), "pass `resized_size`"),
        (dict(image_size=64, resized_size=30), "`resized_size` \\(30\\) must be a multiple of `patch_size` \\(14\\)"),
        (dict(image_size=64, resized_size=28, num_heads=5), "`hidden_size` \\(64\\) must be divisible by `num_heads`"),
        (dict(image_size=64, resized_size=28, mlp_type="relu"), "`mlp_type` must be one of"),
        (dict(image_size=64, resized_size=28, num_register_tokens=-1), "`num_register_tokens` must be an int >= 0"),
    ],
)
def test_bad_arguments(arguments, message):
    with pytest.raises(ValueError, match=message):
        DINOv2Teacher(**{**SMALL, **arguments})


def test_bad_images():
    teacher = DINOv2Teacher(32, 28, **SMALL)
    with pytest.raises(ValueError, match="`images` must be RGB images of shape \\(batch, 32, 32, 3\\)"):
        teacher(np.zeros((1, 28, 28, 3), "float32"))
    with pytest.raises(ValueError, match="`images` must be RGB images"):
        teacher(np.zeros((1, 32, 32), "float32"))
    with pytest.raises(TypeError, match="`images` must be an array of real numbers"):
        teacher(np.zeros((1, 32, 32, 3), bool))


def test_bad_checkpoints(tmp_path):
    reference = randomized(Dinov2Model(Dinov2Config(**TINY, image_size=28)), 5)
    hub = {key: value.numpy() for key, value in hub_state_dict(reference).items()}

    def fails(state, message, **arguments):
        with pytest.raises(ValueError, match=message):
            import_dinov2(state, image_size=32, resized_size=28, **arguments)

    fails({"conv.weight": np.zeros((2, 2))}, "not a DINOv2 checkpoint")
    fails(
        {k: v for k, v in hub.items() if k != "blocks.1.norm2.bias"},
        "missing keys \\['blocks.1.norm2.bias'\\]",
        num_heads=4,
    )
    fails({**hub, "head.weight": np.zeros((3, 64))}, "unexpected keys \\['head.weight'\\]", num_heads=4)
    fails({**hub, "blocks.0.ls1.gamma": np.ones(32)}, "wrong shape .*blocks.0.ls1.gamma", num_heads=4)
    fails({**hub, "pos_embed": np.zeros((1, 7, 64))}, "wrong shape .*pos_embed", num_heads=4)
    narrow = Dinov2Model(Dinov2Config(hidden_size=48, num_hidden_layers=1, num_attention_heads=4, image_size=28))
    fails(hub_state_dict(narrow), "pass `num_heads`")  # 48 wide: no multiple of DINOv2's 64-wide heads
    hf = {key: value.numpy() for key, value in reference.state_dict().items()}
    fails({**hf, "classifier.weight": np.zeros((2, 64))}, "keys a DINOv2 model .* does not: \\['classifier.weight'\\]")
    hf.pop("encoder.layer.0.attention.k_proj.weight")
    fails(hf, "lacks \\['encoder.layer.0.attention.k_proj.weight'\\]")
    folder = write(reference, tmp_path, "hf_folder")
    fails(folder, "`num_heads`=2 contradicts config.json's num_attention_heads=4", num_heads=2)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "use_swiglu_ffn": True}))
    fails(folder, "config.json has use_swiglu_ffn=True, but the weights give False")
    (folder / "config.json").write_text(json.dumps({**config, "hidden_act": "relu"}))
    fails(folder, "config.json has hidden_act='relu'; DINOv2Teacher computes 'gelu'")
    text = tmp_path / "weights.txt"
    text.write_text("not weights")
    fails(text, "must end in one of")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="holds none of"):
        import_dinov2(tmp_path / "empty", image_size=32, resized_size=28)
    with pytest.raises(TypeError, match="`path_or_state` must be a path"):
        import_dinov2(3)
