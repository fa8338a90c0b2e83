"""Configurations of released KL autoencoders, as data, with diffusers' config.json names.

`AutoencoderKL.from_config_name(name)` builds one (random weights);
`keras_sit.convert.import_autoencoder(path, config=name)` fills in what an
LDM checkpoint does not say (its scaling and shift).
"""

AUTOENCODER_CONFIGS = {
    # SD-1.x/2.x (`stabilityai/sd-vae-ft-ema`, `-ft-mse`), the autoencoder of SiT and DiT.
    "sd": {
        "block_out_channels": (128, 256, 512, 512),
        "layers_per_block": 2,
        "latent_channels": 4,
        "norm_num_groups": 32,
        "scaling_factor": 0.18215,
        "shift_factor": 0.0,
    },
    # SDXL: the SD architecture retrained; only the scaling differs.
    "sdxl": {
        "block_out_channels": (128, 256, 512, 512),
        "layers_per_block": 2,
        "latent_channels": 4,
        "norm_num_groups": 32,
        "scaling_factor": 0.13025,
        "shift_factor": 0.0,
    },
    # SD3: 16 latent channels and no quant convs.
    "sd3": {
        "block_out_channels": (128, 256, 512, 512),
        "layers_per_block": 2,
        "latent_channels": 16,
        "norm_num_groups": 32,
        "scaling_factor": 1.5305,
        "shift_factor": 0.0609,
        "use_quant_conv": False,
        "use_post_quant_conv": False,
    },
    # FLUX.1: the SD3 architecture with its own scaling.
    "flux": {
        "block_out_channels": (128, 256, 512, 512),
        "layers_per_block": 2,
        "latent_channels": 16,
        "norm_num_groups": 32,
        "scaling_factor": 0.3611,
        "shift_factor": 0.1159,
        "use_quant_conv": False,
        "use_post_quant_conv": False,
    },
}
