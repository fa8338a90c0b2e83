"""Training objectives: the terms of SiT's loss (see `keras_sit.objectives.base`)."""

from keras_sit.objectives.alignment import RepresentationAlignment
from keras_sit.objectives.base import Objective
from keras_sit.objectives.interpolant import InterpolantLoss

__all__ = ["InterpolantLoss", "Objective", "RepresentationAlignment"]
