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
from keras_sit.evaluation.npz import npz_output_path, open_npz, read_array
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

    Raises:
        TypeError, ValueError: a `model` that is no `SiT` on images, a
            `directory` that is a file or holds other samples (or a damaged
            `samples.json`), a `feature_extractor` that is not callable, or
            `generate` settings that `samples.json` cannot record: all
            checked before anything is created or drawn.
    """
    import keras

    from keras_sit.model import SiT

    if not isinstance(model, SiT):
        raise TypeError(f"`model` must be a keras_sit SiT or LatentSiT; got {type(model).__name__}.")
    directory = _check_directory(directory)
    if os.path.exists(directory) and not os.path.isdir(directory):
        raise ValueError(f"`directory` {directory!r} is a file; give a folder (new, or of these samples) to write to.")
    check_positive_int("num_samples", num_samples)
    check_positive_int("batch_size", batch_size)
    check_seed(seed)
    if feature_extractor is not None and not callable(feature_extractor):
        raise TypeError(f"`feature_extractor` must be callable or None; got {type(feature_extractor).__name__}.")
    if isinstance(verbose, bool) or verbose not in (0, 1, 2):
        raise ValueError(f"`verbose` must be 0, 1 or 2; got {verbose!r}.")
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
        "generate": {key: _jsonable(key, value) for key, value in sorted(generate_kwargs.items())},
    }
    plan_path = os.path.join(directory, PLAN_FILE)
    if os.path.exists(plan_path) and _read_plan(directory) != json.loads(json.dumps(plan)):
        raise ValueError(f"`directory` {directory!r} holds samples drawn with other settings; use a new one.")
    os.makedirs(directory, exist_ok=True)
    index, count = processes.process_index(), processes.process_count()
    if index == 0 and not os.path.exists(plan_path):  # else the same settings: resume
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
    """The chunks written by `generate_for_evaluation`, read back one at a time.

    A `directory` without `samples.json`, a damaged `samples.json`, missing
    chunks, and (when read) a damaged chunk raise a `ValueError` naming the
    folder or the file.
    """

    def __init__(self, directory):
        directory = _check_directory(directory)
        if not os.path.isfile(os.path.join(directory, PLAN_FILE)):
            raise ValueError(
                f"`directory` {directory!r} holds no samples of `generate_for_evaluation` ({PLAN_FILE} is missing)."
            )
        self.plan = _read_plan(directory)
        self.directory = directory
        self.num_chunks = -(-self.plan["num_samples"] // self.plan["batch_size"])
        missing = [c for c in range(self.num_chunks) if not os.path.exists(_chunk_path(directory, c))]
        if missing:
            raise ValueError(
                f"The samples in {directory!r} are unfinished ({len(missing)} chunks missing): resume them."
            )

    def chunks(self):
        """Each chunk's arrays, `{"images", "labels", "feature_<name>"...}`; a damaged chunk raises naming its file."""
        for chunk in range(self.num_chunks):
            path = _chunk_path(self.directory, chunk)
            with open_npz(path, "The sample chunk") as arrays:
                missing = [key for key in ("images", "labels") if key not in arrays.files]
                if missing:
                    raise ValueError(
                        f"The sample chunk {path!r} lacks {missing}: it was not written by `generate_for_evaluation`."
                    )
                yield {name: read_array(arrays, name, path, "The sample chunk") for name in arrays.files}

    def statistics(self, name="pool"):
        """Mean and covariance of one stored feature, accumulated chunk by chunk."""
        statistics = FeatureStatistics()
        for arrays in self.chunks():
            statistics.update(self._feature(arrays, name))
        return statistics

    def features(self, name="pool"):
        """One stored feature of every sample, `[N, d]` (for IS and precision/recall)."""
        return np.concatenate([self._feature(arrays, name) for arrays in self.chunks()])

    def stored_features(self):
        """`{name: dim}` of the features stored with the samples (read from the first chunk)."""
        first = next(self.chunks())
        return {key[len("feature_") :]: first[key].shape[-1] for key in sorted(first) if key.startswith("feature_")}

    def labels(self):
        return np.concatenate([arrays["labels"] for arrays in self.chunks()])

    def write_adm_npz(self, path):
        """All images as ADM's sample file (`arr_0`, uint8 NHWC), written without holding them in memory."""
        path = npz_output_path(path)
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


def _check_directory(directory):
    """`directory` as a str: a TypeError naming it unless it is a path."""
    if not isinstance(directory, (str, os.PathLike)):
        raise TypeError(f"`directory` must be a path to a folder (str or os.PathLike); got {type(directory).__name__}.")
    return os.fspath(directory)


def _read_plan(directory):
    """The settings in `directory`'s `samples.json`, or a `ValueError` naming the file if it is damaged."""
    path = os.path.join(directory, PLAN_FILE)
    try:
        with open(path, "rb") as file:
            plan = json.loads(file.read().decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as error:
        raise ValueError(f"{path!r} is damaged (not the JSON `generate_for_evaluation` writes): {error}") from error
    if not isinstance(plan, dict) or not all(
        isinstance(plan.get(key), int) and not isinstance(plan.get(key), bool) and plan[key] > 0
        for key in ("num_samples", "batch_size")
    ):
        raise ValueError(
            f"{path!r} is damaged: it lacks the positive `num_samples` and `batch_size` it was written with."
        )
    return plan


def extract_features(extractor, images):
    """`extractor(images)` as `{name: array [B, d]}` (an array result is named "pool"); one-channel
    images are handed over as RGB."""
    import keras

    features = extractor(to_rgb(images))
    if not isinstance(features, dict):
        features = {"pool": features}
    arrays = {}
    for name, value in features.items():
        array = np.asarray(keras.ops.convert_to_numpy(value))
        if array.ndim == 0 or array.shape[0] != len(images) or not np.issubdtype(array.dtype, np.number):
            raise ValueError(
                f"`feature_extractor` must return one feature vector per image ({len(images)} rows) of numbers; "
                f"its {name!r} has shape {array.shape} and dtype {array.dtype}."
            )
        arrays[name] = array.reshape(len(images), -1)
    return arrays


def _stored_features(extractor, images):
    return {f"feature_{name}": v.astype("float32") for name, v in extract_features(extractor, images).items()}


def _chunk_path(directory, chunk):
    return os.path.join(directory, f"{CHUNK_PREFIX}{chunk:05d}.npz")


def _jsonable(key, value):
    """A `generate` setting as JSON values, recorded in `samples.json`; a TypeError naming `key` otherwise."""
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if isinstance(value, (list, tuple)):
        return [_jsonable(key, v) for v in value]
    if isinstance(value, (np.integer, np.floating, np.bool_)):
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(
        f"`{key}` must be a number, string, bool, None or a list of them (the runner records the `generate` "
        f"settings in {PLAN_FILE}); got {type(value).__name__}."
    )


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

    Raises:
        ValueError: nothing can be computed (the message says what each
            number needs), or the samples' features and the reference
            statistics have different dimensions; checked before the
            extractor runs.
    """
    from keras_sit.evaluation.metrics import inception_score
    from keras_sit.evaluation.precision_recall import precision_recall
    from keras_sit.evaluation.reference_batches import ReferenceBatch

    check_positive_int("batch_size", batch_size)
    if not isinstance(samples, EvaluationSamples):
        raise TypeError(
            f"`samples` must be EvaluationSamples (from `generate_for_evaluation`); got {type(samples).__name__}."
        )
    if not isinstance(reference, ReferenceBatch):
        raise TypeError(
            f"`reference` must be a ReferenceBatch (from `read_reference_batch`); got {type(reference).__name__}."
        )
    if feature_extractor is not None and not callable(feature_extractor):
        raise TypeError(f"`feature_extractor` must be callable or None; got {type(feature_extractor).__name__}.")
    stored = samples.stored_features()
    extracts = reference.images is not None and feature_extractor is not None
    for key, mu in (("pool", reference.mu), ("spatial", reference.mu_s)):
        if mu is not None and key in stored and stored[key] != mu.shape[0]:
            raise ValueError(
                f"The samples' {key!r} features are {stored[key]}-d, but `reference`'s statistics of them are "
                f"{mu.shape[0]}-d: they come from different feature extractors."
            )
    computable = (
        ("pool" in stored and (reference.mu is not None or extracts))
        or ("spatial" in stored and (reference.mu_s is not None or extracts))
        or "logits_unbiased" in stored
    )
    if not computable:
        raise ValueError(_nothing_to_compute(samples, reference, feature_extractor, stored))
    results = {}
    reference_features = None
    if extracts:
        parts = [_stored_features(feature_extractor, reference.images[i : i + batch_size])
                 for i in range(0, len(reference.images), batch_size)]  # fmt: skip
        reference_features = {key: np.concatenate([part[key] for part in parts]) for key in parts[0]}
    for name, mu, sigma, key in (("fid", reference.mu, reference.sigma, "pool"),
                                 ("sfid", reference.mu_s, reference.sigma_s, "spatial")):  # fmt: skip
        if mu is None and reference_features is not None and f"feature_{key}" in reference_features:
            statistics = FeatureStatistics.from_features(reference_features[f"feature_{key}"])
            mu, sigma = statistics.mean, statistics.covariance
        if mu is not None and key in stored:
            fake = samples.statistics(key)
            results[name] = frechet_distance(fake.mean, fake.covariance, mu, sigma)
    if "logits_unbiased" in stored:
        logits = samples.features("logits_unbiased")
        results["inception_score"] = inception_score(logits, from_logits=True, split_size=min(5000, len(logits)))[0]
    if reference_features is not None and "pool" in stored and "feature_pool" in reference_features:
        precision, recall = precision_recall(reference_features["feature_pool"], samples.features("pool"))
        results.update(precision=precision, recall=recall)
    if not results:  # the extractor gave the reference images none of the samples' features
        raise ValueError(_nothing_to_compute(samples, reference, feature_extractor, stored))
    return results


def _nothing_to_compute(samples, reference, feature_extractor, stored):
    """What `evaluate` lacks, as the message of its ValueError."""
    has = [name for name, value in (("`mu`/`sigma`", reference.mu), ("`mu_s`/`sigma_s`", reference.mu_s),
                                    ("images", reference.images)) if value is not None]  # fmt: skip
    return (
        f"`evaluate` has nothing to compute: the samples in {samples.directory!r} hold the features "
        f"{sorted(stored)}, `reference` holds {', '.join(has) or 'neither statistics nor loaded images'}, and "
        f"`feature_extractor` is {'given' if feature_extractor is not None else 'None'}. FID (sFID) needs the "
        "samples' 'pool' ('spatial') features (`generate_for_evaluation(..., feature_extractor=inception.features)`) "
        "and reference statistics `mu`/`sigma` (`mu_s`/`sigma_s`) or reference images "
        "(`read_reference_batch(..., load_images=True)`) with `feature_extractor`; precision and recall need "
        "'pool' and reference images with `feature_extractor`; the Inception Score needs 'logits_unbiased'."
    )
