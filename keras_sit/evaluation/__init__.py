"""Sample-quality evaluation: the FID Inception network, the metrics on its features, and a
resumable runner that draws the samples.

`evaluate` puts them together: the FID, sFID, Inception Score and precision/recall of drawn samples
against a reference batch, as ADM's evaluator reports them.
"""

from keras_sit.evaluation.inception import FIDInception, inception_preprocess
from keras_sit.evaluation.metrics import (
    FeatureStatistics,
    frechet_distance,
    inception_score,
    kernel_inception_distance,
)
from keras_sit.evaluation.precision_recall import precision_recall
from keras_sit.evaluation.reference_batches import (
    ReferenceBatch,
    read_reference_batch,
    read_samples,
    write_reference_batch,
    write_samples,
)
from keras_sit.evaluation.runner import EvaluationSamples, evaluate, generate_for_evaluation

__all__ = [
    "EvaluationSamples",
    "FIDInception",
    "FeatureStatistics",
    "ReferenceBatch",
    "evaluate",
    "frechet_distance",
    "generate_for_evaluation",
    "inception_preprocess",
    "inception_score",
    "kernel_inception_distance",
    "precision_recall",
    "read_reference_batch",
    "read_samples",
    "write_reference_batch",
    "write_samples",
]
