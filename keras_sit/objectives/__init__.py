"""Training objectives: the terms of SiT's loss (see `keras_sit.objectives.base`)."""

from keras_sit.objectives.alignment import RepresentationAlignment
from keras_sit.objectives.base import Objective
from keras_sit.objectives.interpolant import InterpolantLoss
from keras_sit.objectives.mean_flow import MeanFlow

__all__ = ["InterpolantLoss", "MeanFlow", "Objective", "RepresentationAlignment"]
