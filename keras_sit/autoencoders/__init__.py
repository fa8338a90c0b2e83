"""Autoencoders for latent SiT: the `Autoencoder` interface and its implementations.

`base`: `Autoencoder`, what the latent cache and `LatentSiT` use of an
autoencoder, and `LatentDistribution`, what its encoder gives. `kl`:
`AutoencoderKL`, the Stable Diffusion / SD3 / FLUX KL autoencoder, built from
`blocks` and `coders`; `configs`: the released configurations as data.
Checkpoint importers live in `keras_sit.convert`.
"""

from keras_sit.autoencoders.base import Autoencoder, LatentDistribution, sample_posterior
from keras_sit.autoencoders.configs import AUTOENCODER_CONFIGS
from keras_sit.autoencoders.kl import AutoencoderKL

__all__ = ["AUTOENCODER_CONFIGS", "Autoencoder", "AutoencoderKL", "LatentDistribution", "sample_posterior"]
