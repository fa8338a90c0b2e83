"""keras_sit: Scalable Interpolant Transformers for Keras 3 (JAX, TensorFlow, PyTorch).

Importing it registers its layers and models with Keras, so that a saved
`.keras` file loads with `keras.saving.load_model`; with no backend
configured and TensorFlow missing, it picks an installed one first
(`keras_sit.backend_choice`).
"""

from keras_sit import backend_choice  # noqa: F401  (first: it runs before anything imports Keras)

# isort: split
from keras_sit import callbacks, convert, distribution, evaluation, latents, presets, samplers, visualization
from keras_sit.autoencoder import AutoencoderKL
from keras_sit.backbone import SiTBackbone
from keras_sit.convert import export_official_state_dict, import_official_checkpoint
from keras_sit.functions import (
    cosine_interpolant,
    cosine_velocity,
    linear_interpolant,
    linear_velocity,
    output_size,
    sample_interpolant_time,
    sit_loss,
)
from keras_sit.generation import SamplingSettings
from keras_sit.layers import (
    MLP,
    Attention,
    FinalLayer,
    LabelEmbedding,
    PatchEmbedding,
    SiTBlock,
    TimestepEmbedding,
    Unpatchify,
)
from keras_sit.model import SiT
from keras_sit.optimizers import AdamW
from keras_sit.paths import CosinePath, LinearPath, Path, VPPath, get_path
from keras_sit.pipeline import LatentSiT
from keras_sit.presets import PRESETS, parameter_count
from keras_sit.transport import Transport

__version__ = "0.1.0"

__all__ = [
    "MLP",
    "PRESETS",
    "AdamW",
    "Attention",
    "AutoencoderKL",
    "CosinePath",
    "FinalLayer",
    "LabelEmbedding",
    "LatentSiT",
    "LinearPath",
    "PatchEmbedding",
    "Path",
    "SamplingSettings",
    "SiT",
    "SiTBackbone",
    "SiTBlock",
    "TimestepEmbedding",
    "Transport",
    "Unpatchify",
    "VPPath",
    "callbacks",
    "convert",
    "cosine_interpolant",
    "cosine_velocity",
    "distribution",
    "evaluation",
    "export_official_state_dict",
    "get_path",
    "import_official_checkpoint",
    "latents",
    "linear_interpolant",
    "linear_velocity",
    "output_size",
    "parameter_count",
    "presets",
    "sample_interpolant_time",
    "samplers",
    "sit_loss",
    "visualization",
]
