"""Drawing many samples for evaluation: in chunks on disk, resumable, with their features.

FID-50K means 50,000 samples, class-balanced, each passed through the FID
Inception network. `generate_for_evaluation` draws them in chunks of
`batch_size`; each chunk's images, labels and features are written to one
`.npz` under a temporary name and renamed into place, so a crash loses at
most the chunk in progress and running the same call again resumes after the
last finished chunk. Each chunk has its own seed, so a resumed run gives
exactly the samples of an uninterrupted one, and a job of several processes
(`keras_sit.distribution`), where each process draws every N-th chunk, the
samples of one process (on JAX, load the model under
`keras_sit.distribution.local()`, so that each process samples on its own).
Nothing holds all the samples
in memory: `EvaluationSamples` reads the chunks back one at a time to
accumulate statistics, and writes ADM's sample `.npz` by streaming.

The models are `SiT` (images in [-1, 1], the data range of the examples) and
`LatentSiT` (uint8 images); vector models have no images to evaluate.
"""

import json
import os
import zipfile

import numpy as np

from keras_sit.backend import processes
from keras_sit.evaluation.metrics import FeatureStatistics, frechet_distance
from keras_sit.files import write_atomically
from keras_sit.validation import check_positive_int, check_seed
from keras_sit.visualization import to_rgb, to_uint8

CHUNK_PREFIX = "chunk-"
PLAN_FILE = "samples.json"


def balanced_labels(num_samples, num_classes, seed):
    """`num_samples` labels, each class as often as possible (the remainder spread over the first
    classes), in a seeded random order."""
    labels = np.arange(num_samples) % num_classes
    return np.random.default_rng(seed).permutation(labels).astype("int32")


def generate_for_evaluation(
    model, directory, num_samples=50_000, batch_size=250, feature_extractor=None, seed=0, verbose=1, **generate_kwargs
):
    """Draw `num_samples` images from `model` into `directory`, chunk by chunk; resumable.

    Args:
        model: a `SiT` on images, or a `LatentSiT`.
        directory: where the chunks go. Running again with the same
            arguments resumes; a directory of other samples is refused.
        num_samples: how many (50,000 for FID-50K).
        batch_size: samples a chunk (one `generate` call).
        feature_extractor: None, or a callable taking uint8 images
            `[B, H, W, 3]` and returning an array `[B, d]` or a dict of
            arrays (e.g. `FIDInception.features`: "pool", "logits",
            "spatial"), stored beside the images.
        seed: the labels' order and every chunk's sampling seed.
        verbose: 1 shows a progress bar over the chunks (the chief's, in a
            job of several processes, each of which calls this and draws
            every N-th chunk).
        **generate_kwargs: `generate`'s sampler and guidance settings
            (`sampler`, `num_steps`, `cfg_scale`, ...).

    Returns:
        `EvaluationSamples` over the directory.
    """
    import keras

    check_positive_int("num_samples", num_samples)
    check_positive_int("batch_size", batch_size)
    check_seed(seed)
    for reserved in ("labels", "seed", "noise", "return_trajectory"):
        if reserved in generate_kwargs:
            raise ValueError(f"`{reserved}` is chosen by the runner; it cannot be passed to `generate` here.")
    if not hasattr(model, "autoencoder") and (len(model.data_shape) != 3 or model.data_shape[-1] not in (1, 3)):
        raise ValueError(f"`model` must generate images (1 or 3 channels); its data shape is {model.data_shape}.")
    processes.check_process_local(model, "model")
    plan = {
        "num_samples": int(num_samples),
        "batch_size": int(batch_size),
        "seed": int(seed),
        "num_classes": model.num_classes,
        "generate": {key: _jsonable(value) for key, value in sorted(generate_kwargs.items())},
    }
    os.makedirs(directory, exist_ok=True)
    plan_path = os.path.join(directory, PLAN_FILE)
    index, count = processes.process_index(), processes.process_count()
    if os.path.exists(plan_path):
        with open(plan_path) as file:
            if json.load(file) != json.loads(json.dumps(plan)):
                raise ValueError(f"`directory` {directory!r} holds samples drawn with other settings; use a new one.")
    elif index == 0:
        write_atomically(plan_path, lambda file: file.write(json.dumps(plan, indent=1).encode()))
    labels = None if model.num_classes is None else balanced_labels(num_samples, model.num_classes, seed)
    # In a job of several processes each draws every `count`-th chunk; the chief shows the progress.
    chunks = list(enumerate(range(0, num_samples, batch_size)))[index::count]
    progress = keras.utils.Progbar(len(chunks), verbose=verbose if index == 0 else 0, unit_name="chunk")
    for step, (chunk, start) in enumerate(chunks, 1):
        stop = min(start + batch_size, num_samples)
        path = _chunk_path(directory, chunk)
        if not os.path.exists(path):
            chunk_labels = None if labels is None else labels[start:stop]
            chunk_seed = (seed * 1_000_003 + chunk) % (2**31 - 1)
            options = {"verbose": 0, **generate_kwargs}  # the runner shows its own progress
            with processes.local():  # this process's chunk, not split over a JAX job's devices
                images = model.generate(stop - start, labels=chunk_labels, seed=chunk_seed, **options)
            images = to_uint8(images)
            arrays = {
                "images": images,
                "labels": np.full(stop - start, -1, "int32") if labels is None else chunk_labels,
            }
            if feature_extractor is not None:
                arrays.update(_stored_features(feature_extractor, images))
            write_atomically(path, lambda file, arrays=arrays: np.savez(file, **arrays))
        progress.update(step)
    processes.barrier()  # every chunk is written
    return EvaluationSamples(directory)


class EvaluationSamples:
    """The chunks written by `generate_for_evaluation`, read back one at a time."""

    def __init__(self, directory):
        if not os.path.isfile(os.path.join(directory, PLAN_FILE)):
            raise ValueError(
                f"`directory` {directory!r} holds no samples of `generate_for_evaluation` ({PLAN_FILE} is missing)."
            )
        with open(os.path.join(directory, PLAN_FILE)) as file:
            self.plan = json.load(file)
        self.directory = directory
        self.num_chunks = -(-self.plan["num_samples"] // self.plan["batch_size"])
        missing = [c for c in range(self.num_chunks) if not os.path.exists(_chunk_path(directory, c))]
        if missing:
            raise ValueError(
                f"The samples in {directory!r} are unfinished ({len(missing)} chunks missing): resume them."
            )

    def chunks(self):
        for chunk in range(self.num_chunks):
            with np.load(_chunk_path(self.directory, chunk)) as arrays:
                yield {name: arrays[name] for name in arrays.files}

    def statistics(self, name="pool"):
        """Mean and covariance of one stored feature, accumulated chunk by chunk."""
        statistics = FeatureStatistics()
        for arrays in self.chunks():
            statistics.update(self._feature(arrays, name))
        return statistics

    def features(self, name="pool"):
        """One stored feature of every sample, `[N, d]` (for IS and precision/recall)."""
        return np.concatenate([self._feature(arrays, name) for arrays in self.chunks()])

    def labels(self):
        return np.concatenate([arrays["labels"] for arrays in self.chunks()])

    def write_adm_npz(self, path):
        """All images as ADM's sample file (`arr_0`, uint8 NHWC), written without holding them in memory."""
        first = next(self.chunks())["images"]
        shape = (self.plan["num_samples"], *first.shape[1:])
        header = {"descr": np.lib.format.dtype_to_descr(np.dtype("uint8")), "fortran_order": False, "shape": shape}
        with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
            with archive.open("arr_0.npy", "w", force_zip64=True) as member:
                np.lib.format.write_array_header_1_0(member, header)
                for arrays in self.chunks():
                    member.write(np.ascontiguousarray(arrays["images"]).tobytes())

    def _feature(self, arrays, name):
        if f"feature_{name}" not in arrays:
            stored = sorted(key[len("feature_") :] for key in arrays if key.startswith("feature_"))
            raise ValueError(f"No feature {name!r} was stored with these samples; stored: {stored}.")
        return arrays[f"feature_{name}"]


def extract_features(extractor, images):
    """`extractor(images)` as `{name: array [B, d]}` (an array result is named "pool"); one-channel
    images are handed over as RGB."""
    import keras

    features = extractor(to_rgb(images))
    if not isinstance(features, dict):
        features = {"pool": features}
    return {name: np.asarray(keras.ops.convert_to_numpy(v)).reshape(len(images), -1) for name, v in features.items()}


def _stored_features(extractor, images):
    return {f"feature_{name}": v.astype("float32") for name, v in extract_features(extractor, images).items()}


def _chunk_path(directory, chunk):
    return os.path.join(directory, f"{CHUNK_PREFIX}{chunk:05d}.npz")


def _jsonable(value):
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    return value


def evaluate(samples, reference, feature_extractor=None, batch_size=100):
    """The numbers ADM's evaluator reports, for `samples` against `reference`.

    Args:
        samples: `EvaluationSamples` drawn with the FID network's features
            (`feature_extractor=inception.features` in
            `generate_for_evaluation`: "pool", "spatial", "logits_unbiased").
        reference: a `ReferenceBatch` (`read_reference_batch`); its images
            (`load_images=True`) are needed for precision and recall, or for
            the statistics when it has none.
        feature_extractor: the same extractor, for the reference images.
        batch_size: reference images per extractor call.

    Returns:
        A dict with what can be computed: `fid`, `sfid`, `inception_score`
        (mean over ADM's splits of 5000), `precision`, `recall`.
    """
    from keras_sit.evaluation.metrics import inception_score, precision_recall

    check_positive_int("batch_size", batch_size)
    results = {}
    reference_features = None
    if reference.images is not None and feature_extractor is not None:
        parts = [_stored_features(feature_extractor, reference.images[i : i + batch_size])
                 for i in range(0, len(reference.images), batch_size)]  # fmt: skip
        reference_features = {key: np.concatenate([part[key] for part in parts]) for key in parts[0]}
    for name, mu, sigma, key in (("fid", reference.mu, reference.sigma, "pool"),
                                 ("sfid", reference.mu_s, reference.sigma_s, "spatial")):  # fmt: skip
        if mu is None and reference_features is not None and f"feature_{key}" in reference_features:
            statistics = FeatureStatistics.from_features(reference_features[f"feature_{key}"])
            mu, sigma = statistics.mean, statistics.covariance
        if mu is not None and _has_feature(samples, key):
            fake = samples.statistics(key)
            results[name] = frechet_distance(fake.mean, fake.covariance, mu, sigma)
    if _has_feature(samples, "logits_unbiased"):
        logits = samples.features("logits_unbiased")
        results["inception_score"] = inception_score(logits, from_logits=True, split_size=min(5000, len(logits)))[0]
    if reference_features is not None and _has_feature(samples, "pool"):
        precision, recall = precision_recall(reference_features["feature_pool"], samples.features("pool"))
        results.update(precision=precision, recall=recall)
    return results


def _has_feature(samples, name):
    return f"feature_{name}" in next(samples.chunks())
