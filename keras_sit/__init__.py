"""keras_sit: Scalable Interpolant Transformers for Keras 3 (JAX, TensorFlow, PyTorch).

Importing it registers its layers and models with Keras, so that a saved
`.keras` file loads with `keras.saving.load_model`; with no backend
configured and TensorFlow missing, it picks an installed one first
(`keras_sit.backend_choice`).
"""

from keras_sit import backend_choice  # noqa: F401  (first: it runs before anything imports Keras)

# isort: split
from keras_sit import (
    autoencoders,
    backend,
    callbacks,
    convert,
    distribution,
    evaluation,
    functions,
    images,
    latents,
    layers,
    objectives,
    paths,
    presets,
    sampling,
    teachers,
    training,
    visualization,
)
from keras_sit.autoencoders import Autoencoder, AutoencoderKL
from keras_sit.backbone import SiTBackbone
from keras_sit.callbacks import FrechetDistance, SampleGrid
from keras_sit.convert import (
    export_official_state_dict,
    export_repa_state_dict,
    import_autoencoder,
    import_dinov2,
    import_official_checkpoint,
    import_repa_checkpoint,
)
from keras_sit.evaluation import evaluate
from keras_sit.images import ArrayImages, ImageFolder
from keras_sit.latents import LatentDataset, write_latent_cache
from keras_sit.model import SiT
from keras_sit.objectives import MeanFlow, Objective, RepresentationAlignment
from keras_sit.paths import CosinePath, LinearPath, Path, VPPath
from keras_sit.pipeline import LatentSiT
from keras_sit.presets import PRESETS, parameter_count
from keras_sit.teachers import DINOv2Teacher
from keras_sit.training import AdamW
from keras_sit.transport import Transport
from keras_sit.visualization import save_image_grid

__version__ = "0.1.0"

# What a user needs at the top; everything else lives in the subpackage of its concept.
__all__ = [
    "PRESETS",
    "AdamW",
    "ArrayImages",
    "Autoencoder",
    "AutoencoderKL",
    "CosinePath",
    "DINOv2Teacher",
    "FrechetDistance",
    "ImageFolder",
    "LatentDataset",
    "LatentSiT",
    "LinearPath",
    "MeanFlow",
    "Objective",
    "Path",
    "RepresentationAlignment",
    "SampleGrid",
    "SiT",
    "SiTBackbone",
    "Transport",
    "VPPath",
    "autoencoders",
    "backend",
    "callbacks",
    "convert",
    "distribution",
    "evaluate",
    "evaluation",
    "export_official_state_dict",
    "export_repa_state_dict",
    "functions",
    "images",
    "import_autoencoder",
    "import_dinov2",
    "import_official_checkpoint",
    "import_repa_checkpoint",
    "latents",
    "layers",
    "objectives",
    "parameter_count",
    "paths",
    "presets",
    "sampling",
    "save_image_grid",
    "teachers",
    "training",
    "visualization",
    "write_latent_cache",
]
