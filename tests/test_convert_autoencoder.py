"""Autoencoder checkpoints: parity with diffusers' `AutoencoderKL`, both file layouts, and refusals.

The reference is diffusers' own `AutoencoderKL` with random weights (every
weight re-drawn, norm scales away from one), run in float64. It is saved as
a user downloads it: `save_pretrained` (safetensors or .bin, plus
config.json), and converted to the original LDM names by `to_ldm` below, a
renaming written independently of the library's mapping, saved as
safetensors and as a Lightning-style `.ckpt` with `first_stage_model.` keys.
"""

import functools
import json
import re
import shutil

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL as DiffusersAutoencoderKL
from safetensors.numpy import save_file

from keras_sit.autoencoders import AutoencoderKL
from keras_sit.convert import export_autoencoder_state_dict, import_autoencoder
from tests.conftest import to_numpy
from tests.test_convert import Payload

# (diffusers arguments, image size, batch)
CONFIGS = {
    "tiny": (dict(block_out_channels=(32, 64), layers_per_block=1, norm_num_groups=8, latent_channels=4), 16, 2),
    # SD3/FLUX-like: no quant convs; and no mid-block attention, 16 latent channels, its own scaling.
    "tiny_sd3": (
        dict(
            block_out_channels=(16,),
            layers_per_block=1,
            norm_num_groups=8,
            latent_channels=16,
            use_quant_conv=False,
            use_post_quant_conv=False,
            mid_block_add_attention=False,
            scaling_factor=1.5,
            shift_factor=0.25,
        ),
        8,
        1,
    ),
    # The real SD-1/2 VAE architecture (sd-vae-ft-ema), on one small image.
    "sd": (
        dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2, norm_num_groups=32, latent_channels=4),
        32,
        1,
    ),
}
TOLERANCE = 1e-4  # of the reference's largest magnitude


def random_diffusers_vae(arguments, seed=0):
    levels = len(arguments["block_out_channels"])
    torch.manual_seed(seed)
    vae = DiffusersAutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * levels, up_block_types=("UpDecoderBlock2D",) * levels, **arguments
    ).eval()
    with torch.no_grad():
        for name, parameter in vae.named_parameters():
            if "norm" in name and name.endswith("weight"):
                parameter.copy_(1.0 + 0.1 * torch.randn_like(parameter))
            elif parameter.ndim > 1:  # unit-scale outputs: std 1/sqrt(fan_in)
                parameter.normal_(0.0, parameter[0].numel() ** -0.5)
            else:
                parameter.normal_(0.0, 0.1)
    return vae


def to_ldm(state, levels):
    """diffusers keys -> original LDM keys (decoder levels counted from the top; attention as 1x1 convs)."""
    renames = [
        (r"^encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.", lambda m: f"encoder.down.{m[1]}.block.{m[2]}."),
        (r"^encoder\.down_blocks\.(\d+)\.downsamplers\.0\.", lambda m: f"encoder.down.{m[1]}.downsample."),
        (
            r"^decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.",
            lambda m: f"decoder.up.{levels - 1 - int(m[1])}.block.{m[2]}.",
        ),
        (r"^decoder\.up_blocks\.(\d+)\.upsamplers\.0\.", lambda m: f"decoder.up.{levels - 1 - int(m[1])}.upsample."),
        (r"\.mid_block\.resnets\.(\d+)\.", lambda m: f".mid.block_{int(m[1]) + 1}."),
        (r"\.mid_block\.attentions\.0\.group_norm\.", lambda m: ".mid.attn_1.norm."),
        (r"\.mid_block\.attentions\.0\.to_(q|k|v)\.", lambda m: f".mid.attn_1.{m[1]}."),
        (r"\.mid_block\.attentions\.0\.to_out\.0\.", lambda m: ".mid.attn_1.proj_out."),
        (r"\.conv_shortcut\.", lambda m: ".nin_shortcut."),
        (r"\.conv_norm_out\.", lambda m: ".norm_out."),
    ]
    ldm = {}
    for key, value in state.items():
        for pattern, replacement in renames:
            key = re.sub(pattern, replacement, key)
        if ".attn_1." in key and value.ndim == 2:
            value = value[:, :, None, None]
        ldm[key] = value
    return ldm


def numpy_state(vae):
    return {key: value.detach().numpy().copy() for key, value in vae.state_dict().items()}


class Reference:
    """A random diffusers VAE, its float64 outputs, and its files in each layout (written when first used)."""

    def __init__(self, name, folder):
        arguments, size, batch = CONFIGS[name]
        self.name, self.arguments, self.root = name, arguments, folder
        self.vae = vae = random_diffusers_vae(arguments)
        self.state = numpy_state(vae)
        self.parameters = sum(p.numel() for p in vae.parameters())
        rng = np.random.default_rng(1)
        latent_size = size // 2 ** (len(arguments["block_out_channels"]) - 1)
        self.images = rng.uniform(-1, 1, size=(batch, size, size, 3)).astype("float32")
        self.raw = rng.normal(size=(batch, latent_size, latent_size, arguments["latent_channels"])).astype("float32")
        vae.double()  # the float64 reference; back to float32 (exactly) for the files
        with torch.no_grad():
            posterior = vae.encode(torch.from_numpy(self.images.transpose(0, 3, 1, 2)).double()).latent_dist
            decoded = vae.decode(torch.from_numpy(self.raw.transpose(0, 3, 1, 2)).double()).sample
        vae.float()
        outputs = (posterior.mean, posterior.logvar, decoded)
        self.mean, self.logvar, self.decoded = (t.numpy().transpose(0, 2, 3, 1) for t in outputs)

    @functools.cached_property
    def folder(self):
        """diffusers' layout: safetensors and config.json."""
        self.vae.save_pretrained(self.root / "diffusers", safe_serialization=True)
        return self.root / "diffusers"

    @functools.cached_property
    def bin_folder(self):
        self.vae.save_pretrained(self.root / "diffusers_bin", safe_serialization=False)
        return self.root / "diffusers_bin"

    @functools.cached_property
    def ldm(self):
        return to_ldm(self.state, len(self.arguments["block_out_channels"]))

    @functools.cached_property
    def ldm_file(self):
        """The original names as safetensors, with a training-loss entry the importer must skip."""
        path = self.root / "vae-ldm.safetensors"
        save_file({**self.ldm, "loss.logvar": np.zeros((), np.float32)}, str(path))
        return path

    @functools.cached_property
    def ckpt(self):
        """A Lightning `.ckpt` of a full SD model: the autoencoder under `first_stage_model.`."""
        path = self.root / "sd-full.ckpt"
        state_dict = {f"first_stage_model.{k}": torch.from_numpy(v) for k, v in self.ldm.items()}
        state_dict["model.diffusion_model.out.2.weight"] = torch.zeros(3)
        torch.save({"state_dict": state_dict, "global_step": 10}, path)
        return path

    def ldm_config(self):
        """What an LDM file cannot say about itself."""
        keys = ("norm_num_groups", "scaling_factor", "shift_factor")
        return {key: self.arguments[key] for key in keys if key in self.arguments}


_REFERENCES = {}


def get_reference(name, tmp_path_factory):
    """One `Reference` per configuration (building the SD one takes seconds), shared by this module's tests."""
    if name not in _REFERENCES:
        _REFERENCES[name] = Reference(name, tmp_path_factory.mktemp(name))
    return _REFERENCES[name]


@pytest.fixture(scope="module", autouse=True)
def remove_reference_files():
    """The SD files take over a gigabyte: delete them with the module rather than leave them to pytest's tmp."""
    yield
    for reference in _REFERENCES.values():
        shutil.rmtree(reference.root, ignore_errors=True)
    _REFERENCES.clear()


@pytest.fixture(scope="module", params=list(CONFIGS))
def reference(request, tmp_path_factory):
    return get_reference(request.param, tmp_path_factory)


def relative_error(ours, theirs):
    return np.abs(to_numpy(ours) - theirs).max() / np.abs(theirs).max()


def assert_parity(model, reference):
    mean, logvar = model.encode_moments(reference.images)
    decoded = model.decode(model.scale_latents(reference.raw))
    for ours, theirs in ((mean, reference.mean), (logvar, reference.logvar), (decoded, reference.decoded)):
        assert np.abs(theirs).max() > 0.1  # not zeros against zeros
        assert relative_error(ours, theirs) <= TOLERANCE


def assert_same_weights(model, reference):
    exported = export_autoencoder_state_dict(model)
    assert list(exported) == list(reference.state)  # diffusers' keys, in diffusers' order
    for key, value in reference.state.items():
        np.testing.assert_array_equal(exported[key], value, err_msg=key)


def test_diffusers_folder_matches_diffusers(reference):
    model = import_autoencoder(reference.folder)
    settings = {k: v for k, v in reference.arguments.items() if k != "block_out_channels"}
    assert {k: model.get_config()[k] for k in settings} == settings
    assert model.block_out_channels == reference.arguments["block_out_channels"]
    assert model.count_params() == reference.parameters
    assert_same_weights(model, reference)
    assert_parity(model, reference)


def test_ldm_file_matches_diffusers(reference):
    model = import_autoencoder(reference.ldm_file, config=reference.ldm_config())
    assert_same_weights(model, reference)
    assert_parity(model, reference)


def test_bin_loads_the_same_weights(reference):
    assert_same_weights(import_autoencoder(reference.bin_folder / "diffusion_pytorch_model.bin"), reference)


@pytest.fixture(scope="module", params=["tiny", "tiny_sd3"])
def small_reference(request, tmp_path_factory):
    """The key names do not depend on the widths: the tiny configurations cover the layouts."""
    return get_reference(request.param, tmp_path_factory)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return get_reference("tiny", tmp_path_factory)


def test_full_sd_ckpt_loads_the_same_weights(small_reference):
    assert_same_weights(import_autoencoder(small_reference.ckpt, config=small_reference.ldm_config()), small_reference)


def test_export_layouts_round_trip(small_reference):
    reference = small_reference
    model = import_autoencoder(reference.state, config=reference.ldm_config())
    ldm = export_autoencoder_state_dict(model, format="ldm")
    assert set(ldm) == set(reference.ldm)
    for key, value in reference.ldm.items():
        np.testing.assert_array_equal(ldm[key], value, err_msg=key)
    again = import_autoencoder(ldm, config=reference.ldm_config())
    assert_same_weights(again, reference)


def test_old_diffusers_attention_names(tiny):
    reference = tiny
    old_names = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
    state = {}
    for key, value in reference.state.items():
        for new, old in old_names.items():
            key = key.replace(f"attentions.0.{new}.", f"attentions.0.{old}.")
        state[key] = value
    assert "encoder.mid_block.attentions.0.query.weight" in state
    assert_same_weights(import_autoencoder(state, config=reference.ldm_config()), reference)


# --- settings and refusals, on the tiny checkpoint ---


def test_settings_come_from_config_json_config_or_sd(tiny, tmp_path):
    config = json.loads((tiny.folder / "config.json").read_text())
    config.update(scaling_factor=0.5, shift_factor=None)
    (tmp_path / "config.json").write_text(json.dumps(config))
    shutil.copy(tiny.folder / "diffusion_pytorch_model.safetensors", tmp_path)
    model = import_autoencoder(tmp_path / "diffusion_pytorch_model.safetensors")
    assert (model.scaling_factor, model.shift_factor, model.norm_num_groups) == (0.5, 0.0, 8)
    # An LDM file has no settings: SD's, unless a config name, a dict or overrides say otherwise.
    model = import_autoencoder(tiny.ldm_file, norm_num_groups=8)
    assert (model.scaling_factor, model.shift_factor) == (0.18215, 0.0)
    model = import_autoencoder(tiny.ldm_file, config={"norm_num_groups": 8, "scaling_factor": 0.13025}, seed=3)
    assert (model.scaling_factor, model.seed) == (0.13025, 3)
    with pytest.raises(ValueError, match="block_out_channels"):  # the named config's architecture is not the file's
        import_autoencoder(tiny.ldm_file, config="sdxl")
    with pytest.raises(ValueError, match="latent_channels"):
        import_autoencoder(tiny.ldm_file, norm_num_groups=8, latent_channels=16)
    # A 16-channel file without settings: its scaling is unknown.
    sixteen = AutoencoderKL(block_out_channels=(8,), layers_per_block=1, norm_num_groups=4, latent_channels=16)
    state = export_autoencoder_state_dict(sixteen, format="ldm")
    with pytest.raises(ValueError, match="config="):
        import_autoencoder(state, norm_num_groups=4)
    assert import_autoencoder(state, config={"norm_num_groups": 4, "scaling_factor": 2.0}).latent_channels == 16
    wrong = {**config, "_class_name": "UNet2DModel"}
    with pytest.raises(ValueError, match="UNet2DModel"):
        import_autoencoder(tiny.state, config=wrong)
    with pytest.raises(ValueError, match="latents_mean"):
        import_autoencoder(tiny.state, config={**config, "latents_mean": [0.0] * 4})
    with pytest.raises(ValueError, match="does not know"):
        import_autoencoder(tiny.state, config={**config, "new_setting": 1})


def test_missing_unexpected_and_misshapen_keys_are_named(tiny):
    state = dict(tiny.state)
    missing = "decoder.up_blocks.1.resnets.1.conv2.bias"
    with pytest.raises(ValueError, match=re.escape(missing)):
        import_autoencoder({k: v for k, v in state.items() if k != missing}, config=tiny.ldm_config())
    with pytest.raises(ValueError, match=r"unexpected keys \['encoder\.extra\.weight'\]"):
        import_autoencoder({**state, "encoder.extra.weight": np.zeros(3)}, config=tiny.ldm_config())
    misshapen = "encoder.mid_block.resnets.0.conv2.weight"
    with pytest.raises(ValueError, match=re.escape(misshapen)):
        import_autoencoder({**state, misshapen: state[misshapen][:, :, :2]}, config=tiny.ldm_config())
    with pytest.raises(ValueError, match="neither diffusers keys"):
        import_autoencoder({"conv.weight": np.zeros((1, 1, 1, 1))})
    with pytest.raises(TypeError, match="path_or_state"):
        import_autoencoder([1, 2])
    with pytest.raises(FileNotFoundError, match="diffusion_pytorch_model"):
        import_autoencoder(tiny.folder.parent)
    with pytest.raises(ValueError, match="format"):
        export_autoencoder_state_dict(import_autoencoder(tiny.folder), format="compvis")


def test_pickled_code_is_refused(tiny, tmp_path):
    marker = tmp_path / "executed"
    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {k: torch.from_numpy(v) for k, v in tiny.state.items()}, "extra": Payload(marker)}, evil)
    with pytest.raises(ValueError, match="Refused"):
        import_autoencoder(evil)
    assert not marker.exists()
