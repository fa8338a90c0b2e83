"""Frozen vision networks whose features representation alignment (REPA) regresses SiT's tokens onto.

`DINOv2Teacher` (`dinov2.py`, its layers in `dinov2_layers.py`): DINOv2's
patch tokens of 0..255 images, with REPA's preprocessing built in;
`DINOV2_CONFIGS` holds the released architectures. `interpolation.py`:
PyTorch's bicubic resizes as NumPy matrices (the image resize and the
position-table resampling REPA uses). Weights: `keras_sit.convert.import_dinov2`.
"""

from keras_sit.teachers.dinov2 import DINOV2_CONFIGS, DINOv2Teacher, repa_resized_size
from keras_sit.teachers.interpolation import (
    antialiased_bicubic_matrix,
    bicubic_matrix,
    resample_position_embeddings,
)

__all__ = [
    "DINOV2_CONFIGS",
    "DINOv2Teacher",
    "antialiased_bicubic_matrix",
    "bicubic_matrix",
    "repa_resized_size",
    "resample_position_embeddings",
]
