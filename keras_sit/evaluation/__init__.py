"""Sample-quality evaluation: the FID Inception network and the metrics on its features."""

from keras_sit.evaluation.inception import FIDInception, inception_preprocess

__all__ = ["FIDInception", "inception_preprocess"]
