"""REPA checkpoints: import in keras_sit's time against a PyTorch re-derivation of REPA's SiT (random
weights in REPA's exact key layout, every file variant), export that REPA's model loads strictly, the
exact round trip, and the refusals."""

import argparse

import numpy as np
import pytest
import torch

import keras_sit
from keras_sit.convert import (
    export_repa_state_dict,
    import_official_checkpoint,
    import_repa_checkpoint,
    repa_sampling_options,
)
from tests.conftest import to_numpy
from tests.reference_repa import legacy_layout, random_repa_model

TINY = dict(in_channels=4, hidden_size=64, depth=3, num_heads=4, num_classes=5, projector_dim=32)
# name: (RepaSiT arguments, encoder_depth, how the file is written)
VARIANTS = {
    "bare": (dict(input_size=8, patch_size=2, z_dims=[24]), 2, "bare"),
    "train_ema": (dict(input_size=32, patch_size=4, z_dims=[24]), 2, "train"),
    "train_model": (dict(input_size=32, patch_size=4, z_dims=[24]), 1, "train-model"),
    "legacy": (dict(input_size=8, patch_size=2, z_dims=[24]), 1, "legacy"),
    "qk_norm": (dict(input_size=8, patch_size=2, z_dims=[24], qk_norm=True), 2, "train"),
    "two_projectors": (dict(input_size=8, patch_size=2, z_dims=[24, 16]), 2, "train"),
    "512px": (dict(input_size=64, patch_size=8, z_dims=[24]), 2, "train"),
}


def float32_state(model):
    return {key: value.detach().float().clone() for key, value in model.state_dict().items()}


def train_arguments(config, encoder_depth, **extra):
    """REPA `train.py`'s `args` for a model of `config` (the flags the importer reads, and a few others)."""
    return argparse.Namespace(
        model="SiT-tiny",
        num_classes=TINY["num_classes"],
        encoder_depth=encoder_depth,
        qk_norm=config.get("qk_norm", False),
        fused_attn=True,
        resolution=config["input_size"] * 8,
        path_type="linear",
        weighting="uniform",
        cfg_prob=0.1,
        enc_type=",".join(["dinov2-vit-b", "clip-vit-L"][: len(config["z_dims"])]),
        proj_coeff=0.5,
        legacy=False,
        **extra,
    )


def write_variant(path, name):
    """`(file, reference model, encoder_depth)`: a random REPA-format checkpoint of variant `name`."""
    config, encoder_depth, layout = VARIANTS[name]
    config = {**TINY, **config, "encoder_depth": encoder_depth}
    model = random_repa_model(seed=hash(name) % 1000, **config)
    state = float32_state(model)
    if layout == "bare":
        torch.save(state, path)
    elif layout == "legacy":
        torch.save(legacy_layout(state, encoder_depth), path)
    else:
        other = {key: value + 1.0 for key, value in state.items()}  # the weights not asked for
        ema, online = (state, other) if layout == "train" else (other, state)
        optimizer = {
            "state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.zeros(2)}},
            "param_groups": [{"lr": 1e-4, "betas": (0.9, 0.999), "params": [0]}],
        }
        arguments = train_arguments(config, encoder_depth)
        checkpoint = {"model": online, "ema": ema, "opt": optimizer, "args": arguments, "steps": 7}
        torch.save(checkpoint, path)
    return path, model, encoder_depth


def repa_outputs(model, x_nhwc, t, labels):
    with torch.no_grad():
        out, zs = model(
            torch.from_numpy(np.transpose(x_nhwc, (0, 3, 1, 2))).double(),
            torch.from_numpy(t).double(),
            torch.from_numpy(labels).long(),
        )
    return np.transpose(out.numpy(), (0, 2, 3, 1)), [z.numpy() for z in zs]


def keras_outputs(sit, x, t, labels):
    alignment = sit.objectives[1]
    inputs = {"x_t": x, "t": t, "labels": labels.astype("int32")}
    out, tokens = sit.backbone.call_with_tokens(inputs, token_depths=(alignment.depth,))
    zs = [to_numpy(alignment.project(tokens[alignment.depth], k)) for k in range(len(alignment.feature_dims))]
    return to_numpy(out), zs


def inputs_for(sit, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2, *sit.data_shape)).astype("float32")
    return x, np.array([0.3, 0.85], "float32"), np.array([1, 5], "int64")  # 5: the null class


@pytest.mark.parametrize("name", list(VARIANTS))
def test_import_computes_repa_forward_in_keras_sit_time(tmp_path, name):
    path, model, encoder_depth = write_variant(tmp_path / "repa.pt", name)
    bare = VARIANTS[name][2] == "bare"
    sit = import_repa_checkpoint(
        path,
        weights="model" if name == "train_model" else "ema",
        encoder_depth=encoder_depth if bare else None,
        num_heads=None if name == "qk_norm" else TINY["num_heads"],
    )
    assert sit.time_convention == "keras_sit" and sit.backbone.time_embedding_scale == 1
    assert sit.backbone.qk_norm == (name == "qk_norm") and not sit.backbone.learn_sigma
    alignment = sit.objectives[1]
    assert (alignment.depth, alignment.feature_dims) == (encoder_depth, tuple(VARIANTS[name][0]["z_dims"]))
    if name == "two_projectors":
        assert alignment.feature_keys == ("dinov2_vit_b", "clip_vit_L")
    x, t, labels = inputs_for(sit)
    expected, expected_zs = repa_outputs(model, x, t, labels)
    out, zs = keras_outputs(sit, x, t, labels)
    np.testing.assert_allclose(out, expected, atol=1e-4, rtol=0)
    for z, expected_z in zip(zs, expected_zs, strict=True):
        np.testing.assert_allclose(z, expected_z, atol=1e-4, rtol=0)
    # No flip of time or sign: the velocity the samplers integrate is REPA's output at REPA's t.
    classes = np.array([1, 4], "int64")
    velocity = to_numpy(sit.velocity(x, t, classes.astype("int32")))
    np.testing.assert_allclose(velocity, repa_outputs(model, x, t, classes)[0], atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", ["bare", "legacy", "qk_norm", "two_projectors"])
def test_import_export_import_is_exact_and_repa_loads_the_export_strictly(tmp_path, name):
    path, model, encoder_depth = write_variant(tmp_path / "repa.pt", name)
    sit = import_repa_checkpoint(path, encoder_depth=encoder_depth, num_heads=TINY["num_heads"])
    exported = export_repa_state_dict(sit)
    original = float32_state(model)
    assert list(exported) == list(original)  # REPA's keys, in its order
    for key, value in original.items():
        np.testing.assert_array_equal(exported[key], value.numpy(), err_msg=key)
    config, _, _ = VARIANTS[name]
    fresh = random_repa_model(seed=99, **{**TINY, **config, "encoder_depth": encoder_depth})
    fresh.load_state_dict({key: torch.from_numpy(value) for key, value in exported.items()}, strict=True)
    again = export_repa_state_dict(import_repa_checkpoint(exported, encoder_depth=encoder_depth, num_heads=4))
    assert all(np.array_equal(again[key], exported[key]) for key in exported) and list(again) == list(exported)


def test_export_of_a_keras_sit_model_loads_in_repa_with_the_same_outputs():
    """A model built here (sigma outputs, no null row, an alignment head) exports to REPA's layout."""
    alignment = keras_sit.RepresentationAlignment(
        depth=1, feature_dims=(12, 8), feature_keys=("a", "b"), projector_dim=16
    )
    sit = keras_sit.SiT(
        input_shape=(8, 8, 4), patch_size=2, hidden_size=64, depth=2, num_heads=4, num_classes=3,
        class_dropout_prob=0.0, learn_sigma=True, time_embedding_scale=1, objectives=[alignment], seed=3,
    )  # fmt: skip
    rng = np.random.default_rng(1)
    for variable in sit.trainable_variables:
        variable.assign(0.1 * rng.standard_normal(variable.shape).astype("float32"))
    exported = export_repa_state_dict(sit)
    assert exported["final_layer.linear.weight"].shape[0] == 2 * 2 * 4  # no sigma rows
    assert exported["y_embedder.embedding_table.weight"].shape[0] == 4  # 3 classes and a (zero) null row
    model = random_repa_model(
        input_size=8, patch_size=2, in_channels=4, hidden_size=64, depth=2, num_heads=4, num_classes=3,
        encoder_depth=1, z_dims=[12, 8], projector_dim=16,
    )  # fmt: skip
    model.load_state_dict({key: torch.from_numpy(value) for key, value in exported.items()}, strict=True)
    x, t, labels = inputs_for(sit, seed=2)
    labels = np.array([0, 2], "int64")
    expected, expected_zs = repa_outputs(model, x, t, labels)
    out, zs = keras_outputs(sit, x, t, labels)
    np.testing.assert_allclose(out, expected, atol=1e-4, rtol=0)
    for z, expected_z in zip(zs, expected_zs, strict=True):
        np.testing.assert_allclose(z, expected_z, atol=1e-4, rtol=0)
    other_time = keras_sit.SiT(input_shape=(8, 8, 4), patch_size=2, hidden_size=64, depth=1, num_heads=4, num_classes=3)
    with pytest.raises(ValueError, match="time_embedding_scale=1"):
        export_repa_state_dict(other_time)


def test_train_checkpoint_settings_become_the_models_training_settings(tmp_path):
    config = {**TINY, **VARIANTS["train_ema"][0], "encoder_depth": 2}
    model = random_repa_model(**config)
    arguments = train_arguments(config, 2)
    arguments.weighting, arguments.proj_coeff, arguments.legacy, arguments.cfg_prob = "lognormal", 0.8, True, 0.2
    torch.save({"ema": float32_state(model), "args": arguments}, tmp_path / "c.pt")
    sit = import_repa_checkpoint(tmp_path / "c.pt", num_heads=4)
    assert sit.transport.time_sampler == "logit_normal" and sit.objectives[1].weight == 0.8
    assert sit.backbone.class_dropout_prob == pytest.approx(1 - 0.9 * 0.8)  # dropped in sit.py and in train.py
    assert (
        import_repa_checkpoint(tmp_path / "c.pt", num_heads=4, class_dropout_prob=0.1).backbone.class_dropout_prob
        == 0.1
    )


def test_official_importer_refuses_repa_files_and_names_the_repa_importer(tmp_path):
    path, model, _ = write_variant(tmp_path / "repa.pt", "bare")
    with pytest.raises(ValueError, match="import_repa_checkpoint"):
        import_official_checkpoint(path)
    # Without projectors, a train.py checkpoint still tells by its arguments.
    state = {key: value for key, value in float32_state(model).items() if not key.startswith("projectors.")}
    arguments = train_arguments({**VARIANTS["bare"][0]}, 2)
    torch.save({"ema": state, "args": arguments}, tmp_path / "stripped.pt")
    with pytest.raises(ValueError, match="import_repa_checkpoint"):
        import_official_checkpoint(tmp_path / "stripped.pt")


def test_what_the_file_cannot_tell_is_a_named_argument(tmp_path):
    path, model, _ = write_variant(tmp_path / "repa.pt", "bare")
    with pytest.raises(ValueError, match="encoder_depth"):
        import_repa_checkpoint(path, num_heads=4)
    with pytest.raises(ValueError, match="num_heads"):
        import_repa_checkpoint(path, encoder_depth=2)  # width 64 is no REPA preset's
    with pytest.raises(ValueError, match="`depth`=5 contradicts"):
        import_repa_checkpoint(path, encoder_depth=2, num_heads=4, depth=5)
    with pytest.raises(ValueError, match="weights"):
        import_repa_checkpoint(path, weights="online")
    train_path, _, _ = write_variant(tmp_path / "train.pt", "train_ema")
    with pytest.raises(ValueError, match="encoder_depth.*contradicts"):
        import_repa_checkpoint(train_path, encoder_depth=3, num_heads=4)
    official = {key: value for key, value in float32_state(model).items() if not key.startswith("projectors.")}
    official["final_layer.linear.weight"] = torch.cat([official["final_layer.linear.weight"]] * 2)
    official["final_layer.linear.bias"] = torch.cat([official["final_layer.linear.bias"]] * 2)
    with pytest.raises(ValueError, match="import_official_checkpoint"):
        import_repa_checkpoint(official, num_heads=4)


def test_sample_repa_example_writes_pngs_and_the_adm_npz(tmp_path):
    """The example end to end: a tiny REPA-format checkpoint, a tiny diffusers autoencoder, generate.py's flags."""
    from PIL import Image

    from tests.test_examples import diffusers_autoencoder, load

    path, _, _ = write_variant(tmp_path / "repa.pt", "bare")  # 8x8x4 latents
    vae = str(diffusers_autoencoder(tmp_path / "vae"))  # downsamples by 2: 16 px images
    load("sample_repa").main([
        "--ckpt", str(path), "--encoder-depth", "2", "--num-heads", "4", "--vae", vae, "--mode", "sde",
        "--num-steps", "3", "--cfg-scale", "1.8", "--guidance-high", "0.7", "--num-fid-samples", "3",
        "--per-proc-batch-size", "2", "--sample-dir", str(tmp_path / "samples"),
    ])  # fmt: skip
    folder = tmp_path / "samples" / "repa-size-16-cfg-1.8-seed-0-sde-3"
    pngs = sorted(folder.glob("*.png"))
    assert [p.name for p in pngs] == ["000000.png", "000001.png", "000002.png"]
    with np.load(str(folder) + ".npz") as npz:
        images = npz["arr_0"]
    assert images.shape == (3, 16, 16, 3) and images.dtype == np.uint8
    np.testing.assert_array_equal(np.asarray(Image.open(pngs[2])), images[2])


def test_repa_sampling_options_follow_generate_py_flags():
    assert repa_sampling_options() == {"sampler": "euler", "num_steps": 50, "cfg_scale": 1.5}
    assert repa_sampling_options("ode", 10, heun=True, cfg_scale=1.0) == {"sampler": "heun-euler-last", "num_steps": 10}
    sde = repa_sampling_options("sde", 250, cfg_scale=1.8, guidance_high=0.7)
    assert sde == {
        "sampler": "sde-euler", "num_steps": 249, "diffusion": "linear", "last_step": "mean", "last_step_size": 0.04,
        "cfg_scale": 1.8, "guidance_interval": (0.0, 0.7),
    }  # fmt: skip
    with pytest.raises(ValueError, match="cfg_scale"):
        repa_sampling_options(cfg_scale=0.5)
    with pytest.raises(ValueError, match="mode"):
        repa_sampling_options("flow")


def test_an_imported_model_trains_on_with_alignment(tmp_path):
    path, _, _ = write_variant(tmp_path / "repa.pt", "two_projectors")
    sit = import_repa_checkpoint(path, num_heads=4)
    alignment = sit.objectives[1]
    before = [to_numpy(w) for w in alignment.weights]
    rng = np.random.default_rng(0)
    batch = {
        "x": rng.standard_normal((2, 8, 8, 4)).astype("float32"),
        "dinov2_vit_b": rng.standard_normal((2, 16, 24)).astype("float32"),
        "clip_vit_L": rng.standard_normal((2, 16, 16)).astype("float32"),
    }
    sit.compile()
    history = sit.fit(batch, np.array([0, 3], "int32"), epochs=1, verbose=0)
    assert np.isfinite(history.history["alignment"][0])  # the term of both projectors, logged apart
    assert all(not np.array_equal(to_numpy(w), b) for w, b in zip(alignment.weights, before, strict=True))
