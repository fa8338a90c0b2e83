"""Training machinery around `keras.Model.fit`: the step guard, the EMA's bookkeeping and the default optimizer."""

from keras_sit.training.optimizers import AdamW

__all__ = ["AdamW"]
