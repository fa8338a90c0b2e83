"""The latent cache: a data set encoded once by an autoencoder, then streamed into `fit`.

Latent SiT trains on the latents of an autoencoder (Stable Diffusion's KL
autoencoder turns a 256x256x3 image into 32x32x4 latents). Encoding every
image at every step would cost more than the SiT itself, so the images are
encoded once. This module gathers the pieces under one name:

- the image sources (`keras_sit.images`): `ImageFolder` reads a folder of
  class sub-folders and prepares each image as ADM, DiT and the official
  SiT prepare ImageNet (`center_crop`); `ArrayImages` takes uint8 arrays.
  A file that does not decode raises an `UnreadableImageError` (a
  `ValueError`) naming it.
- `write_latent_cache` (`keras_sit.latent_cache`, where the cache's layout
  is described): each image and its mirror encoded into atomic, resumable
  shards with per-channel statistics, and optionally frozen teachers' patch
  tokens beside them (`teachers=`, for REPA; `keras_sit.latent_features`).
  `cache.json` records fingerprints of the source and the models, so a
  cache is resumed only from the same ones, and NaN latents or tokens are
  refused before their shard is written.
- `LatentDataset` (`keras_sit.latent_dataset`): the shards memory-mapped
  and streamed as a `keras.utils.PyDataset`, a fresh draw from the stored
  posterior and a random flip each time an example is used, with the
  teachers' tokens of the same flip (`features=`) and per-channel
  normalisation (`normalize=`) on request.
"""

from keras_sit.images import (
    ArrayImages,
    ImageFolder,
    UnreadableImageError,
    center_crop,
    read_image,
    to_rgb,
)
from keras_sit.latent_cache import write_latent_cache
from keras_sit.latent_cache_files import CACHE_FILE, read_cache_description
from keras_sit.latent_dataset import LatentDataset

__all__ = [
    "CACHE_FILE",
    "ArrayImages",
    "ImageFolder",
    "LatentDataset",
    "UnreadableImageError",
    "center_crop",
    "read_cache_description",
    "read_image",
    "to_rgb",
    "write_latent_cache",
]
