"""Checkpoints in other libraries' formats, one importer each.

`sit`: the official PyTorch SiT. `repa`: REPA's SiT, in keras_sit's time,
with its projectors. `autoencoder`: the KL autoencoder in
the diffusers and original LDM layouts. `checkpoints`: reading safetensors and
PyTorch pickles into NumPy without running pickled code.
"""

from keras_sit.convert.autoencoder import export_autoencoder_state_dict, import_autoencoder
from keras_sit.convert.dinov2 import import_dinov2 as import_dinov2
from keras_sit.convert.inception import import_fid_inception as import_fid_inception
from keras_sit.convert.repa import export_repa_state_dict, import_repa_checkpoint, repa_sampling_options
from keras_sit.convert.sit import export_official_state_dict, import_official_checkpoint

__all__ = [
    "export_autoencoder_state_dict",
    "export_official_state_dict",
    "export_repa_state_dict",
    "import_autoencoder",
    "import_official_checkpoint",
    "import_repa_checkpoint",
    "repa_sampling_options",
]
