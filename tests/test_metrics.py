"""The sample-quality metrics against independent computations on fixed data (NumPy only)."""

import itertools
import math

import numpy as np
import pytest
import scipy.linalg
import scipy.spatial.distance

from keras_sit.evaluation import reference_batches
from keras_sit.evaluation.metrics import (
    FeatureStatistics,
    frechet_distance,
    inception_score,
    kernel_inception_distance,
)
from keras_sit.evaluation.precision_recall import precision_recall


def gaussian_features(rng, n, dim, shift=0.0, scale=1.0):
    mixing = rng.normal(size=(dim, dim)) / np.sqrt(dim)
    return shift + scale * rng.normal(size=(n, dim)) @ mixing


# --- FID ---------------------------------------------------------------------------------


def test_fid_matches_scipy_sqrtm_on_well_conditioned_covariances(rng):
    x, y = gaussian_features(rng, 400, 8), gaussian_features(rng, 300, 8, shift=0.5, scale=1.3)
    mu1, sigma1, mu2, sigma2 = x.mean(0), np.cov(x, rowvar=False), y.mean(0), np.cov(y, rowvar=False)
    covmean = scipy.linalg.sqrtm(sigma1 @ sigma2).real
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(sigma1 + sigma2 - 2 * covmean)
    np.testing.assert_allclose(frechet_distance(mu1, sigma1, mu2, sigma2), expected, rtol=1e-9)
    # Symmetric in its two Gaussians.
    np.testing.assert_allclose(frechet_distance(mu2, sigma2, mu1, sigma1), expected, rtol=1e-9)


def test_fid_on_rank_deficient_covariances_matches_a_nuclear_norm(rng):
    # 10 samples in 64 dims: covariances of rank 9. With S = F^T F (F the centred samples over
    # sqrt(n - 1)), tr sqrt(S1 S2) is the sum of the singular values of the small F1 F2^T.
    dim, n = 64, 10
    x, y = rng.normal(size=(n, dim)), rng.normal(0.3, 2.0, size=(n + 3, dim))
    f1 = (x - x.mean(0)) / np.sqrt(len(x) - 1)
    f2 = (y - y.mean(0)) / np.sqrt(len(y) - 1)
    sigma1, sigma2 = f1.T @ f1, f2.T @ f2
    assert np.linalg.matrix_rank(sigma1) == n - 1
    nuclear = np.linalg.svd(f1 @ f2.T, compute_uv=False).sum()
    diff = x.mean(0) - y.mean(0)
    expected = diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * nuclear
    fid = frechet_distance(x.mean(0), sigma1, y.mean(0), sigma2)
    assert isinstance(fid, float) and math.isfinite(fid) and fid >= 0
    np.testing.assert_allclose(fid, expected, rtol=1e-10)
    streamed = FeatureStatistics.from_features(x).frechet_distance(FeatureStatistics.from_features(y))
    np.testing.assert_allclose(streamed, fid, rtol=1e-10)


@pytest.mark.parametrize("n", [10, 500])
def test_fid_of_identical_statistics_is_zero(rng, n):
    x = gaussian_features(rng, n, 64, shift=2.0)
    mu, sigma = x.mean(0), np.cov(x, rowvar=False)
    assert abs(frechet_distance(mu, sigma, mu, sigma)) < 1e-6


def test_fid_of_diagonal_gaussians_is_the_closed_form(rng):
    mu1, mu2 = rng.normal(size=16), rng.normal(size=16)
    s1, s2 = rng.uniform(0.1, 3.0, size=16), rng.uniform(0.1, 3.0, size=16)
    s2[:3] = 0.0  # singular
    expected = np.sum((mu1 - mu2) ** 2) + np.sum(s1 + s2 - 2 * np.sqrt(s1 * s2))
    np.testing.assert_allclose(frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2)), expected, rtol=1e-12)


def test_fid_rejects_bad_inputs():
    mu, sigma = np.zeros(3), np.eye(3)
    with pytest.raises(ValueError, match="`mu1` and `mu2`"):
        frechet_distance(mu, sigma, np.zeros(4), np.eye(4))
    with pytest.raises(ValueError, match="`sigma2` must be a covariance of shape"):
        frechet_distance(mu, sigma, mu, np.eye(4))
    with pytest.raises(ValueError, match="`mu1` must be a mean vector"):
        frechet_distance(np.zeros((3, 1)), sigma, mu, sigma)
    with pytest.raises(ValueError, match="`sigma1` must be finite"):
        frechet_distance(mu, np.full((3, 3), np.nan), mu, sigma)
    with pytest.raises(ValueError, match="`sigma2` must be a symmetric"):
        frechet_distance(mu, sigma, mu, np.triu(np.ones((3, 3))))
    with pytest.raises(TypeError, match="`mu2` must be an array of real numbers"):
        frechet_distance(mu, sigma, np.array(["a", "b", "c"]), sigma)


# --- streaming statistics ----------------------------------------------------------------


def test_streaming_statistics_equal_the_statistics_of_all_features(rng):
    x = gaussian_features(rng, 257, 12, shift=1e4).astype("float32")  # a mean large next to the spread
    statistics = FeatureStatistics()
    for start, stop in [(0, 1), (1, 100), (100, 100), (100, 200), (200, 257)]:
        statistics.update(x[start:stop])
    reference = x.astype(np.float64)
    assert statistics.count == 257 and statistics.dim == 12
    np.testing.assert_allclose(statistics.mean, reference.mean(0), rtol=1e-13)
    np.testing.assert_allclose(statistics.covariance, np.cov(reference, rowvar=False), rtol=1e-9, atol=1e-12)
    assert statistics.covariance.dtype == np.float64


def test_merged_statistics_equal_those_of_the_union(rng):
    x, y = gaussian_features(rng, 50, 6), gaussian_features(rng, 31, 6, shift=3.0)
    merged = FeatureStatistics.from_features(x).merge(FeatureStatistics.from_features(y)).merge(FeatureStatistics())
    union = np.concatenate([x, y])
    assert merged.count == 81
    np.testing.assert_allclose(merged.mean, union.mean(0), rtol=1e-12)
    np.testing.assert_allclose(merged.covariance, np.cov(union, rowvar=False), rtol=1e-10)
    empty = FeatureStatistics().merge(FeatureStatistics.from_features(x))
    np.testing.assert_allclose(empty.covariance, np.cov(x, rowvar=False), rtol=1e-12)


def test_statistics_save_and_load_round_trip_and_resume(rng, tmp_path):
    x = gaussian_features(rng, 40, 5)
    path = tmp_path / "stats.npz"
    FeatureStatistics.from_features(x[:30]).save(path)
    with np.load(path) as data:  # ADM's keys
        np.testing.assert_array_equal(data["mu"], x[:30].mean(0))
        np.testing.assert_allclose(data["sigma"], np.cov(x[:30], rowvar=False), rtol=1e-12)
    loaded = FeatureStatistics.load(path)
    assert loaded.count == 30
    loaded.update(x[30:])
    np.testing.assert_allclose(loaded.covariance, np.cov(x, rowvar=False), rtol=1e-12)


def test_statistics_reject_bad_inputs(rng, tmp_path):
    statistics = FeatureStatistics(dim=4)
    with pytest.raises(ValueError, match="mean is undefined"):
        _ = statistics.mean
    statistics.update(np.ones((1, 4)))
    with pytest.raises(ValueError, match="at least 2"):
        _ = statistics.covariance
    with pytest.raises(ValueError, match="`features` must be vectors"):
        statistics.update(np.ones((3, 5)))
    with pytest.raises(ValueError, match="`features` must be features of shape"):
        statistics.update(np.ones(4))
    with pytest.raises(ValueError, match="`features` must be finite"):
        statistics.update(np.array([[0.0, np.inf, 0.0, 0.0]]))
    with pytest.raises(ValueError, match="`other` has feature dimension 3"):
        statistics.merge(FeatureStatistics.from_features(np.ones((2, 3))))
    with pytest.raises(TypeError, match="`other` must be a FeatureStatistics"):
        statistics.merge(np.ones((2, 4)))
    with pytest.raises(TypeError, match="`dim`"):
        FeatureStatistics(dim=2.0)
    np.savez(tmp_path / "adm.npz", mu=np.zeros(4), sigma=np.eye(4))
    with pytest.raises(ValueError, match="read_reference_batch"):
        FeatureStatistics.load(tmp_path / "adm.npz")


# --- KID ---------------------------------------------------------------------------------


def kid_double_loop(x, y):
    """The unbiased MMD^2 with the cubic kernel, pair by pair."""
    m, d = len(x), x.shape[1]

    def k(a, b):
        return (sum(float(ai) * float(bi) for ai, bi in zip(a, b)) / d + 1) ** 3

    xx = sum(k(x[i], x[j]) for i, j in itertools.permutations(range(m), 2))
    yy = sum(k(y[i], y[j]) for i, j in itertools.permutations(range(m), 2))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m))
    return (xx + yy) / (m * (m - 1)) - 2 * xy / m**2


def test_kid_matches_a_double_loop(rng):
    x, y = rng.normal(size=(14, 5)), rng.normal(0.5, 1.0, size=(17, 5))
    draws = np.random.RandomState(7)  # the documented draws: per subset, features1 then features2
    expected = []
    for _ in range(3):
        i, j = draws.choice(14, 6, replace=False), draws.choice(17, 6, replace=False)
        expected.append(kid_double_loop(x[i], y[j]))
    mean, std = kernel_inception_distance(x, y, num_subsets=3, subset_size=6, seed=7)
    np.testing.assert_allclose([mean, std], [np.mean(expected), np.std(expected)], rtol=1e-10)


def test_kid_caps_the_subset_size_at_the_sample_counts(rng):
    x, y = rng.normal(size=(8, 3)), rng.normal(size=(11, 3))
    draws = np.random.RandomState(0)
    i, j = draws.choice(8, 8, replace=False), draws.choice(11, 8, replace=False)
    mean, std = kernel_inception_distance(x, y, num_subsets=1, subset_size=1000, seed=0)
    np.testing.assert_allclose(mean, kid_double_loop(x[i], y[j]), rtol=1e-10)
    assert std == 0.0


def test_kid_separates_distributions(rng):
    x, y, z = np.split(gaussian_features(rng, 900, 16), 3)
    same = kernel_inception_distance(x, y, num_subsets=20, subset_size=100)[0]
    apart = kernel_inception_distance(x, z + 1.0, num_subsets=20, subset_size=100)[0]
    assert abs(same) < 0.05 < apart


def test_kid_rejects_bad_inputs(rng):
    x = rng.normal(size=(10, 4))
    with pytest.raises(ValueError, match="`features2` must be vectors"):
        kernel_inception_distance(x, rng.normal(size=(10, 5)))
    with pytest.raises(ValueError, match="`features1` must hold at least 2"):
        kernel_inception_distance(x[:1], x)
    with pytest.raises(ValueError, match="`subset_size` must be at least 2"):
        kernel_inception_distance(x, x, subset_size=1)
    with pytest.raises(ValueError, match="`num_subsets`"):
        kernel_inception_distance(x, x, num_subsets=0)
    with pytest.raises(TypeError, match="`seed`"):
        kernel_inception_distance(x, x, seed=1.5)


# --- Inception Score ---------------------------------------------------------------------


def test_inception_score_matches_a_hand_computation():
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.3, 0.3, 0.4], [0.2, 0.5, 0.3], [0.6, 0.0, 0.4]])

    def score(rows):
        marginal = [sum(row[c] for row in rows) / len(rows) for c in range(3)]
        kls = [sum(row[c] * math.log(row[c] / marginal[c]) for c in range(3) if row[c] > 0) for row in rows]
        return math.exp(sum(kls) / len(kls))

    # splits=2 over 5 rows: rows [0, 2) and [2, 5); split_size=2: [0, 2), [2, 4), [4, 5).
    scores = [score(probs[:2]), score(probs[2:])]
    np.testing.assert_allclose(inception_score(probs, splits=2), [np.mean(scores), np.std(scores)], rtol=1e-12)
    scores = [score(probs[:2]), score(probs[2:4]), score(probs[4:])]
    np.testing.assert_allclose(inception_score(probs, split_size=2), [np.mean(scores), np.std(scores)], rtol=1e-12)


def test_inception_score_from_logits_applies_a_softmax(rng):
    logits = rng.normal(0.0, 3.0, size=(40, 10)) + 100.0
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    np.testing.assert_allclose(
        inception_score(logits, splits=4, from_logits=True), inception_score(probs, splits=4), rtol=1e-12
    )


def test_inception_score_of_uniform_and_of_balanced_one_hot_predictions():
    np.testing.assert_allclose(inception_score(np.full((30, 1008), 1 / 1008), splits=3), (1.0, 0.0), atol=1e-12)
    one_hot = np.eye(7)[np.arange(70) % 7]  # every split of 14 rows holds each class twice
    np.testing.assert_allclose(inception_score(one_hot, splits=5), (7.0, 0.0), atol=1e-12)


def test_inception_score_rejects_bad_inputs(rng):
    logits = rng.normal(size=(10, 5))
    with pytest.raises(ValueError, match="from_logits=True"):
        inception_score(logits)
    with pytest.raises(ValueError, match="`splits` \\(11\\) must not exceed"):
        inception_score(logits, splits=11, from_logits=True)
    with pytest.raises(ValueError, match="`splits`"):
        inception_score(logits, splits=0, from_logits=True)
    with pytest.raises(TypeError, match="`from_logits`"):
        inception_score(logits, from_logits=1)
    with pytest.raises(ValueError, match="`logits_or_probs` must be finite"):
        inception_score(np.full((4, 3), np.nan), splits=1, from_logits=True)


# --- precision and recall ----------------------------------------------------------------


def brute_force_precision_recall(real, fake, k):
    def radii(x):
        return np.sort(scipy.spatial.distance.cdist(x, x), axis=1)[:, k]

    cross = scipy.spatial.distance.cdist(real, fake)
    precision = np.mean(np.any(cross <= radii(real)[:, None], axis=0))
    recall = np.mean(np.any(cross <= radii(fake)[None, :], axis=1))
    return precision, recall


def test_precision_recall_matches_a_brute_force_computation(rng):
    real, fake = rng.normal(size=(53, 6)), rng.normal(0.7, 1.5, size=(41, 6))
    expected = brute_force_precision_recall(real, fake, k=3)
    assert 0 < expected[0] < 1 and 0 < expected[1] < 1
    for block_size in (7, 1000):
        np.testing.assert_array_equal(precision_recall(real, fake, k=3, block_size=block_size), expected)
    np.testing.assert_array_equal(precision_recall(real, fake, k=5), brute_force_precision_recall(real, fake, k=5))


def test_precision_recall_on_point_clouds_with_known_answers(rng):
    cluster_a, cluster_b = rng.normal(size=(20, 4)), rng.normal(size=(20, 4)) + 100.0
    assert precision_recall(cluster_a, cluster_a) == (1.0, 1.0)
    assert precision_recall(cluster_a, cluster_b) == (0.0, 0.0)
    # The samples are half the real set: all of them are real (precision 1), half the real set is missed.
    real = np.concatenate([cluster_a, cluster_b])
    assert precision_recall(real, cluster_a, block_size=8) == (1.0, 0.5)
    assert precision_recall(cluster_a, real, block_size=8) == (0.5, 1.0)


def test_precision_recall_rejects_bad_inputs(rng):
    x = rng.normal(size=(4, 3))
    with pytest.raises(ValueError, match="`real_features` must hold at least 5"):
        precision_recall(x, x, k=4)
    with pytest.raises(ValueError, match="`fake_features` must be vectors"):
        precision_recall(x, rng.normal(size=(4, 2)), k=1)
    with pytest.raises(ValueError, match="`k`"):
        precision_recall(x, x, k=0)
    with pytest.raises(TypeError, match="`block_size`"):
        precision_recall(x, x, block_size=None)
    with pytest.raises(TypeError, match="`real_features` must be an array of real numbers"):
        precision_recall(x.astype(bool), x)


# --- ADM's npz batches -------------------------------------------------------------------


def test_reference_batch_round_trip(rng, tmp_path):
    x = gaussian_features(rng, 30, 6)
    spatial = gaussian_features(rng, 30, 9)
    images = rng.integers(0, 256, size=(5, 8, 8, 3), dtype=np.uint8)
    path = tmp_path / "ref.npz"
    reference_batches.write_reference_batch(
        path, x.mean(0), np.cov(x, rowvar=False), spatial.mean(0), np.cov(spatial, rowvar=False), images=images
    )
    batch = reference_batches.read_reference_batch(path)
    assert batch.has_statistics and batch.has_spatial_statistics
    assert batch.images is None and batch.image_shape == (5, 8, 8, 3)
    np.testing.assert_array_equal(batch.mu, x.mean(0))
    np.testing.assert_array_equal(batch.sigma, np.cov(x, rowvar=False))
    np.testing.assert_array_equal(batch.sigma_s, np.cov(spatial, rowvar=False))
    np.testing.assert_array_equal(reference_batches.read_reference_batch(path, load_images=True).images, images)
    # FeatureStatistics.save writes the same keys; ADM's own files are plain np.savez.
    FeatureStatistics.from_features(x).save(tmp_path / "ours.npz")
    np.testing.assert_allclose(reference_batches.read_reference_batch(tmp_path / "ours.npz").mu, x.mean(0))
    np.savez(tmp_path / "adm.npz", images, mu=x.mean(0), sigma=np.cov(x, rowvar=False))
    batch = reference_batches.read_reference_batch(tmp_path / "adm.npz")
    assert batch.image_shape == (5, 8, 8, 3) and not batch.has_spatial_statistics


def test_samples_round_trip_in_adm_format(rng, tmp_path):
    images = rng.integers(0, 256, size=(6, 4, 4, 3), dtype=np.uint8)
    labels = np.arange(6, dtype=np.int64)
    reference_batches.write_samples(tmp_path / "samples.npz", images, labels)
    with np.load(tmp_path / "samples.npz") as data:  # the layout ADM's evaluator reads
        assert sorted(data.files) == ["arr_0", "arr_1"]
        assert data["arr_0"].dtype == np.uint8
    read_images, read_labels = reference_batches.read_samples(tmp_path / "samples.npz")
    np.testing.assert_array_equal(read_images, images)
    np.testing.assert_array_equal(read_labels, labels)
    reference_batches.write_samples(tmp_path / "unlabelled.npz", images)
    assert reference_batches.read_samples(tmp_path / "unlabelled.npz")[1] is None


def test_npz_batches_reject_bad_inputs(rng, tmp_path):
    images = np.zeros((2, 4, 4, 3), np.uint8)
    with pytest.raises(TypeError, match="`images` must be uint8"):
        reference_batches.write_samples(tmp_path / "s.npz", images.astype("float32"))
    with pytest.raises(ValueError, match="`images` must be images of shape"):
        reference_batches.write_samples(tmp_path / "s.npz", np.zeros((2, 4, 4, 1), np.uint8))
    with pytest.raises(ValueError, match="`labels` must have shape \\(2,\\)"):
        reference_batches.write_samples(tmp_path / "s.npz", images, labels=np.zeros(3, int))
    with pytest.raises(TypeError, match="`labels` must be integer"):
        reference_batches.write_samples(tmp_path / "s.npz", images, labels=np.zeros(2))
    with pytest.raises(ValueError, match="`mu_s` and `sigma_s`"):
        reference_batches.write_reference_batch(tmp_path / "r.npz", np.zeros(2), np.eye(2), mu_s=np.zeros(2))
    with pytest.raises(ValueError, match="`sigma` must be a covariance"):
        reference_batches.write_reference_batch(tmp_path / "r.npz", np.zeros(2), np.eye(3))
    np.savez(tmp_path / "half.npz", mu=np.zeros(2))
    with pytest.raises(ValueError, match="only one of `mu` and `sigma`"):
        reference_batches.read_reference_batch(tmp_path / "half.npz")
    np.savez(tmp_path / "float_images.npz", images.astype("float32"))
    with pytest.raises(TypeError, match="arr_0 .* must be uint8"):
        reference_batches.read_reference_batch(tmp_path / "float_images.npz")
    with pytest.raises(TypeError, match="arr_0 .* must be uint8"):
        reference_batches.read_samples(tmp_path / "float_images.npz")
    np.savez(tmp_path / "other.npz", x=np.zeros(2))
    with pytest.raises(ValueError, match="not an ADM batch"):
        reference_batches.read_reference_batch(tmp_path / "other.npz")
    with pytest.raises(ValueError, match="no `arr_0`"):
        reference_batches.read_samples(tmp_path / "other.npz")
