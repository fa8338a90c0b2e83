"""Checkpoints in other libraries' formats, one importer each.

`sit`: the official PyTorch SiT. `checkpoints`: reading safetensors and
PyTorch pickles into NumPy without running pickled code.
"""

from keras_sit.convert.sit import export_official_state_dict, import_official_checkpoint

__all__ = ["export_official_state_dict", "import_official_checkpoint"]
