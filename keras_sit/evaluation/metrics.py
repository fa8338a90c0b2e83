"""Sample-quality metrics on feature vectors, in NumPy: FID, KID and IS (precision and recall: `precision_recall`).

The definitions are those of ADM's evaluator (openai/guided-diffusion,
`evaluations/evaluator.py`), which the diffusion literature (ADM, DiT, SiT)
reports, and of pytorch-fid and torch-fidelity where ADM has no counterpart
(KID). The features are typically InceptionV3's 2048-d pool features (FID,
KID, precision/recall) and its logits (IS). Everything that accumulates or
decomposes is done in float64: FID on 2048-d covariances loses digits in
float32.
"""

import numpy as np

from keras_sit.evaluation.npz import npz_output_path, open_npz, read_array
from keras_sit.validation import check_bool, check_data, check_positive_int, check_real_dtype, check_seed

# --- input checks --------------------------------------------------------------------------


def _as_float64(name, value):
    """`value` as a float64 array; a TypeError naming `name` if it is not real numbers."""
    array = np.asarray(value)
    check_real_dtype(name, array)
    return array.astype(np.float64)


def _check_finite(name, array):
    if not np.all(np.isfinite(array)):
        raise ValueError(f"`{name}` must be finite; it holds {int(np.sum(~np.isfinite(array)))} NaN or inf values.")


def _features(name, value, dim=None, min_rows=1):
    """`value` as float64 features `[N, dim]` with `N >= min_rows`, finite."""
    array = _as_float64(name, value)
    if array.ndim != 2:
        raise ValueError(f"`{name}` must be features of shape (num_samples, dim); got shape {array.shape}.")
    if dim is not None:
        check_data(array, (dim,), name)
    if array.shape[1] == 0:
        raise ValueError(f"`{name}` must have at least one feature per sample; got shape {array.shape}.")
    if array.shape[0] < min_rows:
        raise ValueError(f"`{name}` must hold at least {min_rows} samples; got {array.shape[0]}.")
    _check_finite(name, array)
    return array


def _gaussian(mu_name, mu, sigma_name, sigma, check_psd=True):
    """A mean `[d]` (d >= 1) and a covariance `[d, d]`, float64 and finite, checked and symmetrised.

    The covariance must be symmetric (to 1e-6 of its largest entry) and,
    unless `check_psd` is False (for a caller that decomposes it and calls
    `_check_psd` itself), positive semi-definite.
    """
    mu = _as_float64(mu_name, mu)
    sigma = _as_float64(sigma_name, sigma)
    if mu.ndim != 1:
        raise ValueError(f"`{mu_name}` must be a mean vector of shape (dim,); got shape {mu.shape}.")
    if mu.shape[0] == 0:
        raise ValueError(f"`{mu_name}` must have at least one dimension; got shape {mu.shape}.")
    if sigma.shape != (mu.shape[0], mu.shape[0]):
        raise ValueError(
            f"`{sigma_name}` must be a covariance of shape ({mu.shape[0]}, {mu.shape[0]}) to match `{mu_name}`; "
            f"got shape {sigma.shape}."
        )
    _check_finite(mu_name, mu)
    _check_finite(sigma_name, sigma)
    scale = np.max(np.abs(sigma), initial=0.0)
    if np.max(np.abs(sigma - sigma.T), initial=0.0) > 1e-6 * scale:
        raise ValueError(f"`{sigma_name}` must be a symmetric covariance matrix; it is not symmetric.")
    sigma = (sigma + sigma.T) / 2
    if check_psd:
        _check_psd(sigma_name, np.linalg.eigvalsh(sigma))
    return mu, sigma


# Negative eigenvalues down to this fraction of the largest are rounding (a rank-deficient covariance
# stored in float32 has them near 1e-9), not a mistake (a matrix that is no covariance has them near 1).
PSD_TOLERANCE = 1e-4


def _check_psd(sigma_name, eigenvalues):
    """The eigenvalues (ascending) of a covariance: none below `-PSD_TOLERANCE` times the largest magnitude."""
    largest = np.max(np.abs(eigenvalues), initial=0.0)
    if eigenvalues[0] < -PSD_TOLERANCE * largest:
        raise ValueError(
            f"`{sigma_name}` must be a covariance matrix (positive semi-definite); it has the negative eigenvalue "
            f"{eigenvalues[0]:.6g}, beyond rounding of the largest, {largest:.6g}."
        )


# --- streaming statistics ----------------------------------------------------------------


class FeatureStatistics:
    """Streaming float64 mean and covariance of feature vectors, fed batch by batch.

    Holds the count, the mean and the sum of outer products of deviations from
    the mean (`d + d*d` numbers, whatever the number of samples). Batches are
    combined with Chan et al.'s pairwise update, which, unlike raw sums of
    `x x^T`, does not cancel digits when the mean is large next to the spread.
    `mean` and `covariance` equal `np.mean(x, 0)` and `np.cov(x, rowvar=False)`
    (unbiased) of all the features at once: the `mu` and `sigma` of ADM's
    reference batches.

    Args:
        dim: the feature dimension, or None to take it from the first batch.
    """

    def __init__(self, dim=None):
        check_positive_int("dim", dim, allow_none=True)
        self._dim = None if dim is None else int(dim)
        self._count = 0
        self._mean = None
        self._scatter = None  # sum over samples of (x - mean)(x - mean)^T

    @classmethod
    def from_features(cls, features):
        """The statistics of one array `[N, dim]`."""
        return cls().update(features)

    @property
    def dim(self):
        return self._dim

    @property
    def count(self):
        """The number of feature vectors seen."""
        return self._count

    @property
    def mean(self):
        """The mean `[dim]` (float64)."""
        if self._count == 0:
            raise ValueError("FeatureStatistics has seen no features: the mean is undefined.")
        return self._mean.copy()

    @property
    def covariance(self):
        """The unbiased covariance `[dim, dim]` (float64), as `np.cov(features, rowvar=False)`."""
        if self._count < 2:
            raise ValueError(f"The covariance needs at least 2 feature vectors; FeatureStatistics has {self._count}.")
        return self._scatter / (self._count - 1)

    def update(self, features):
        """Add a batch `[B, dim]` of feature vectors; returns self."""
        features = _features("features", features, dim=self._dim, min_rows=0)
        if features.shape[0] == 0:
            return self
        mean = features.mean(axis=0)
        centered = features - mean
        self._combine(features.shape[0], mean, centered.T @ centered)
        return self

    def merge(self, other):
        """Fold the statistics of `other` (a disjoint set of features) into these; returns self."""
        if not isinstance(other, FeatureStatistics):
            raise TypeError(f"`other` must be a FeatureStatistics; got {type(other).__name__}.")
        if other._count == 0:
            return self
        if self._dim is not None and other._dim != self._dim:
            raise ValueError(f"`other` has feature dimension {other._dim}; these statistics have {self._dim}.")
        self._combine(other._count, other._mean.copy(), other._scatter.copy())
        return self

    def _combine(self, count, mean, scatter):
        if self._count == 0:
            self._dim, self._count, self._mean, self._scatter = mean.shape[0], count, mean, scatter
            return
        total = self._count + count
        delta = mean - self._mean
        self._mean = self._mean + delta * (count / total)
        self._scatter = self._scatter + scatter + np.outer(delta, delta) * (self._count * count / total)
        self._count = total

    def frechet_distance(self, other):
        """FID between these statistics and `other`'s."""
        if not isinstance(other, FeatureStatistics):
            raise TypeError(f"`other` must be a FeatureStatistics; got {type(other).__name__}.")
        return frechet_distance(self.mean, self.covariance, other.mean, other.covariance)

    def save(self, path):
        """Write `mu`, `sigma` (float64, as in ADM's reference batches) and `count` to an `.npz`.

        NumPy appends `.npz` to a path without it. The count lets `load` resume
        accumulating; ADM's evaluator reads only `mu` and `sigma`. Refused
        before anything is written: fewer than 2 features seen, a `path` that
        is a folder or in a folder that does not exist.
        """
        npz_output_path(path)
        mean, covariance = self.mean, self.covariance
        np.savez(path, mu=mean, sigma=covariance, count=np.int64(self._count))

    @classmethod
    def load(cls, path):
        """Statistics written by `save` (ADM's reference batches, which have no count, are read
        by `keras_sit.evaluation.reference_batches.read_reference_batch`).

        A missing file raises a `FileNotFoundError`; a damaged or truncated
        `.npz`, missing keys, a `count` that is not an integer >= 2, and a
        `mu`/`sigma` that is not a finite mean and covariance raise a
        `ValueError` (or a `TypeError` for non-numbers) naming the file.
        """
        with open_npz(path) as data:
            missing = [key for key in ("mu", "sigma", "count") if key not in data.files]
            if missing:
                raise ValueError(
                    f"{path} lacks {missing}: FeatureStatistics.load reads files written by FeatureStatistics.save "
                    "(for ADM's reference batches, use reference_batches.read_reference_batch)."
                )
            mu, sigma, count = (read_array(data, key, path) for key in ("mu", "sigma", "count"))
        if count.shape != () or not np.issubdtype(count.dtype, np.integer) or count < 2:
            raise ValueError(f"{path}: `count` must be an integer >= 2; got {count!r}.")
        mu, sigma = _gaussian(f"mu (in {path})", mu, f"sigma (in {path})", sigma)
        statistics = cls(dim=mu.shape[0])
        statistics._count, statistics._mean, statistics._scatter = int(count), mu, sigma * (int(count) - 1)
        return statistics

    def __repr__(self):
        return f"FeatureStatistics(dim={self._dim}, count={self._count})"


# --- FID ---------------------------------------------------------------------------------


def _clip_rounding(eigenvalues):
    """Eigenvalues of a symmetric PSD matrix with those at rounding level (below `d * eps` of the
    largest, negative ones included) set to 0: their square roots would add noise, not signal."""
    cutoff = eigenvalues.shape[0] * np.finfo(np.float64).eps * np.max(np.abs(eigenvalues), initial=0.0)
    return np.where(eigenvalues > cutoff, eigenvalues, 0.0)


def _psd_sqrt(eigenvalues, eigenvectors):
    """The symmetric square root of a symmetric PSD matrix, from its eigendecomposition."""
    return (eigenvectors * np.sqrt(_clip_rounding(eigenvalues))) @ eigenvectors.T


def frechet_distance(mu1, sigma1, mu2, sigma2):
    """The Frechet distance between N(mu1, sigma1) and N(mu2, sigma2): FID on Inception statistics.

    `|mu1 - mu2|^2 + tr(sigma1) + tr(sigma2) - 2 tr(sqrt(sigma1 sigma2))`, as in
    ADM's evaluator and pytorch-fid. They take `scipy.linalg.sqrtm(sigma1 @ sigma2)`,
    a square root of a non-symmetric product, which on singular or ill-conditioned
    covariances (fewer samples than dimensions, rank-deficient features) can fail,
    return NaN, or carry large imaginary parts, depending on the BLAS. Here the trace
    is taken from a symmetric matrix instead: with `R = sqrt(sigma1)` (symmetric,
    from an eigendecomposition), `sigma1 sigma2` is similar to `R sigma2 R`, which
    is symmetric PSD, so `tr(sqrt(sigma1 sigma2))` is the sum of the square roots
    of its eigenvalues. Symmetric eigensolvers are backward stable and return real
    eigenvalues; those at rounding level (below `d * eps` of the largest, or
    negative) are taken as 0, as a pseudo-inverse does, since the square root would
    magnify their rounding error. All in float64.

    Args:
        mu1, mu2: means `[d]`, d >= 1, finite.
        sigma1, sigma2: covariances `[d, d]`: finite, symmetric (to 1e-6 of
            the largest entry) and positive semi-definite (no eigenvalue below
            `-1e-4` times the largest); anything else is refused with a
            `ValueError` naming it, as it has no Frechet distance.

    Returns:
        The distance, a float >= 0 (a rounding-level negative result is returned as 0).
    """
    mu1, sigma1 = _gaussian("mu1", mu1, "sigma1", sigma1, check_psd=False)  # decomposed below
    mu2, sigma2 = _gaussian("mu2", mu2, "sigma2", sigma2)
    if mu1.shape != mu2.shape:
        raise ValueError(f"`mu1` and `mu2` must have the same dimension; got {mu1.shape[0]} and {mu2.shape[0]}.")
    eigenvalues, eigenvectors = np.linalg.eigh(sigma1)
    _check_psd("sigma1", eigenvalues)
    root1 = _psd_sqrt(eigenvalues, eigenvectors)
    inner = root1 @ sigma2 @ root1
    eigenvalues = np.linalg.eigvalsh((inner + inner.T) / 2)
    trace_covmean = np.sum(np.sqrt(_clip_rounding(eigenvalues)))
    diff = mu1 - mu2
    distance = diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_covmean
    return max(float(distance), 0.0)


# --- KID ---------------------------------------------------------------------------------


def _polynomial_kernel(x, y):
    """`(x . y / d + 1)^3`, the KID kernel."""
    return (x @ y.T / x.shape[1] + 1.0) ** 3


def _mmd2_unbiased(x, y):
    """The unbiased MMD^2 estimate between two equal-size samples under the KID kernel."""
    m = x.shape[0]
    k_xx = _polynomial_kernel(x, x)
    k_yy = _polynomial_kernel(y, y)
    k_xy = _polynomial_kernel(x, y)
    within = (k_xx.sum() - np.trace(k_xx) + k_yy.sum() - np.trace(k_yy)) / (m * (m - 1))
    return within - 2.0 * k_xy.sum() / (m * m)


def kernel_inception_distance(features1, features2, num_subsets=100, subset_size=1000, seed=0):
    """KID (Binkowski et al. 2018): the unbiased MMD^2 under `k(x, y) = (x . y / d + 1)^3`,
    averaged over random subsets.

    Each of `num_subsets` draws takes `subset_size` samples of each set without
    replacement (`subset_size` capped at the smaller set, as clean-fid does) and
    computes `(sum_{i != j} k(x_i, x_j) + sum_{i != j} k(y_i, y_j)) / (m (m - 1))
    - 2 sum_{i, j} k(x_i, y_j) / m^2`, torch-fidelity's and clean-fid's estimator
    (the cross term keeps its diagonal). The draws follow torch-fidelity's:
    `np.random.RandomState(seed)`, per subset first from `features1`, then from
    `features2`, so with `seed=2020` (its default) and the same features, the
    values equal torch-fidelity's. KID can be slightly negative for close sets.

    Args:
        features1, features2: features `[N1, d]` and `[N2, d]`, at least 2 each.
        num_subsets: how many subsets to average over.
        subset_size: samples per subset from each set.
        seed: the seed of the subset draws (None: unseeded).

    Returns:
        `(mean, std)` of the per-subset estimates (std with `ddof=0`, as torch-fidelity).
    """
    x = _features("features1", features1, min_rows=2)
    y = _features("features2", features2, dim=x.shape[1], min_rows=2)
    check_positive_int("num_subsets", num_subsets)
    check_positive_int("subset_size", subset_size)
    check_seed(seed)
    if subset_size < 2:
        raise ValueError(f"`subset_size` must be at least 2 (the estimator excludes pairs (i, i)); got {subset_size}.")
    m = min(int(subset_size), x.shape[0], y.shape[0])
    rng = np.random.RandomState(seed)
    estimates = np.empty(int(num_subsets))
    for i in range(int(num_subsets)):
        subset1 = x[rng.choice(x.shape[0], m, replace=False)]
        subset2 = y[rng.choice(y.shape[0], m, replace=False)]
        estimates[i] = _mmd2_unbiased(subset1, subset2)
    return float(np.mean(estimates)), float(np.std(estimates))


# --- Inception Score ---------------------------------------------------------------------


def inception_score(logits_or_probs, splits=10, from_logits=False, *, split_size=None):
    """The Inception Score `exp(E_x KL(p(y|x) || p(y)))`, mean and std over splits.

    As ADM's evaluator (after improved-gan): the samples are split in contiguous
    chunks, in order, without shuffling; in each, `p(y)` is the chunk's mean
    prediction, and the score is `exp` of the mean KL. ADM's predictions are the
    softmax over the 1008 outputs of the TF Inception graph (`pool_3 @ W` of
    `softmax/logits/MatMul`, no bias), and chunks of `split_size=5000`: for 50,000
    samples that is the 10 equal chunks of the default `splits=10`. `0 log 0`
    counts as 0. Computed in float64 (from logits via a log-softmax).

    Args:
        logits_or_probs: `[N, num_classes]`, class probabilities (each row >= 0,
            summing to 1), or logits if `from_logits`.
        splits: the number of chunks; chunk `i` is rows `[i N // splits, (i + 1) N // splits)`.
        from_logits: whether the input is logits (a softmax is applied).
        split_size: instead of `splits`, chunks of this many rows (the last may be
            shorter), ADM's convention (5000).

    Returns:
        `(mean, std)` of the per-chunk scores (std with `ddof=0`, as improved-gan).
    """
    check_bool("from_logits", from_logits)
    values = _features("logits_or_probs", logits_or_probs, min_rows=1)
    n = values.shape[0]
    if split_size is None:
        check_positive_int("splits", splits)
        if splits > n:
            raise ValueError(f"`splits` ({splits}) must not exceed the number of samples ({n}).")
        bounds = [(i * n // splits, (i + 1) * n // splits) for i in range(int(splits))]
    else:
        check_positive_int("split_size", split_size)
        bounds = [(start, min(start + int(split_size), n)) for start in range(0, n, int(split_size))]
    if from_logits:
        shifted = values - values.max(axis=1, keepdims=True)
        log_probs = shifted - np.log(np.sum(np.exp(shifted), axis=1, keepdims=True))
        probs = np.exp(log_probs)
    else:
        probs = values
        if np.any(probs < 0) or not np.allclose(probs.sum(axis=1), 1.0, rtol=0, atol=1e-3):
            raise ValueError(
                "`logits_or_probs` must be probabilities (rows >= 0 summing to 1); pass `from_logits=True` for logits."
            )
        log_probs = np.log(np.where(probs > 0, probs, 1.0))
    scores = []
    for start, stop in bounds:
        p, log_p = probs[start:stop], log_probs[start:stop]
        marginal = p.mean(axis=0)
        log_marginal = np.log(np.where(marginal > 0, marginal, 1.0))
        kl = np.sum(np.where(p > 0, p * (log_p - log_marginal), 0.0), axis=1)
        scores.append(np.exp(np.mean(kl)))
    return float(np.mean(scores)), float(np.std(scores))
